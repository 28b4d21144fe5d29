"""The control-plane test tier: real etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
CoreDNS (built by binaries.py), the pods run by our node agent as local processes (docs/testing.md)."""
