"""The control-plane test tier: real etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
CoreDNS, kube-proxy and real nodes (kubelet + containerd), built by binaries.py (docs/testing.md)."""
