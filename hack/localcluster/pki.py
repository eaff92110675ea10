"""Certificates and keys for the local control plane (a private CA, serving and client certs, SA keys).

Everything is created once under ``<state>/pki`` and reused, so restarts keep kubeconfigs valid.
:func:`issue_client_cert` is public so the node agent can get a ``system:node:<name>`` identity.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=3650)

# Names the API server answers to: loopback, and the in-cluster names of the `kubernetes` Service.
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{pki / 'ca.key'} is not an EC private key; delete {pki} to regenerate")
    return cert, key


def ensure_ca(pki: Path) -> None:
    if (pki / "ca.crt").is_file() and (pki / "ca.key").is_file():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeloop-local-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(pki / "ca.key", _key_pem(key))
    (pki / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(
    pki: Path,
    stem: str,
    *,
    common_name: str,
    organizations: Sequence[str] = (),
    server: bool = False,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> tuple[Path, Path]:
    crt, keyfile = pki / f"{stem}.crt", pki / f"{stem}.key"
    if crt.is_file() and keyfile.is_file():
        return crt, keyfile
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if dns_names or ip_addresses:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(keyfile, _key_pem(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, keyfile


def issue_client_cert(
    pki: Path, stem: str, common_name: str, organizations: Sequence[str] = ()
) -> tuple[Path, Path]:
    """A client certificate (e.g. ``system:node:<name>`` in ``system:nodes``), created once."""
    ensure_ca(pki)
    return _issue(pki, stem, common_name=common_name, organizations=organizations)


def ensure_control_plane_pki(pki: Path, *, service_ip: str, extra_ips: Sequence[str] = ()) -> None:
    """CA, API server serving cert, client certs of the admin and the controller-manager, SA keys."""
    pki.mkdir(parents=True, exist_ok=True)
    ensure_ca(pki)
    _issue(
        pki,
        "apiserver",
        common_name="kube-apiserver",
        server=True,
        dns_names=APISERVER_DNS_NAMES,
        ip_addresses=("127.0.0.1", service_ip, *extra_ips),
    )
    _issue(pki, "admin", common_name="kubeloop-admin", organizations=("system:masters",))
    _issue(pki, "kube-controller-manager", common_name="system:kube-controller-manager")
    # The API server's identity towards kubelets (the node agent's log endpoint, later).
    _issue(
        pki,
        "apiserver-kubelet-client",
        common_name="kube-apiserver-kubelet-client",
        organizations=("system:masters",),
    )
    if not (pki / "sa.key").is_file():
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(pki / "sa.key", _key_pem(sa))
        (pki / "sa.pub").write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def write_kubeconfig(
    path: Path, *, server: str, ca: Path, cert: Path, key: Path, user: str, context: str = "kubeloop"
) -> None:
    """A kubeconfig with the credentials embedded (self-contained, so it can be copied anywhere)."""
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [
            {"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}
        ],
        "contexts": [
            {"name": context, "context": {"cluster": context, "user": user, "namespace": "default"}}
        ],
        "current-context": context,
    }
    _write_private(path, yaml.safe_dump(config, sort_keys=False).encode())
