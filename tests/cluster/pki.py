"""The control plane's certificates and keys, made fresh for each test session.

What kubeadm writes under /etc/kubernetes/pki, reduced to what a one-machine control plane
uses: one CA that signs the apiserver's serving certificate (SANs: 127.0.0.1, localhost and the
in-cluster names `kubernetes.default.svc...` and the Service IP 10.0.0.1) and the client
certificates of each component, identified as Kubernetes' bootstrap RBAC policy expects
(CN = user, O = group):

    admin                      CN=speedrun-test-admin, O=system:masters
    kube-controller-manager    CN=system:kube-controller-manager
    kube-scheduler             CN=system:kube-scheduler
    each kubelet               CN=system:node:<name>, O=system:nodes

and the service-account signing key pair (the apiserver signs TokenRequest tokens with the
private key and verifies them with the public one; the controller-manager's token controller
signs with the same key). Keys are EC P-256: quick to make, accepted everywhere.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_IP = "10.0.0.1"  # the first address of --service-cluster-ip-range (10.0.0.0/24)
APISERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
VALID_FOR = datetime.timedelta(days=2)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


class ClusterPKI:
    """A CA in `directory` and the certificates it signs (each written as <name>.crt/.key)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca_key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = _name("speedrun-test-ca")
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )  # fmt: skip
        self.ca = KeyPair(directory / "ca.crt", _write_key(self._ca_key, directory / "ca.key"))
        self.ca.cert.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))
        self.service_account = self._service_account_keys()
        self.apiserver = self.issue(
            "apiserver", "kube-apiserver", server_names=APISERVER_NAMES, server_ips=("127.0.0.1", SERVICE_IP)
        )

    def issue(
        self,
        file_name: str,
        common_name: str,
        organization: str | None = None,
        *,
        server_names: tuple[str, ...] = (),
        server_ips: tuple[str, ...] = (),
    ) -> KeyPair:
        """A certificate signed by the CA: a server's when names or IPs are given, else a client's."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        server = bool(server_names or server_ips)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        pair = KeyPair(self.directory / f"{file_name}.crt", _write_key(key, self.directory / f"{file_name}.key"))
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def _service_account_keys(self) -> KeyPair:
        """(public key as `cert`, private key): --service-account-key-file / -signing-key-file."""
        key = _key()
        public = self.directory / "sa.pub"
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return KeyPair(public, _write_key(key, self.directory / "sa.key"))
