"""A throwaway certificate authority for local runs: tests and benchmarks (`cryptography`).

One CA signs a server certificate for ``localhost``/127.0.0.1 and any client certificates a
caller asks for, each with a subject common name and optional DNS/URI subject alternative
names. Keys are ECDSA P-256, valid for an hour; nothing here is meant for production.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ClientCert:
    cert: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Save as NAME.pem and NAME.key in `directory`; returns both paths."""
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        return cert, key


@dataclass
class Pki:
    directory: Path
    ca: bytes
    ca_path: Path
    server_cert: Path
    server_key: Path
    _ca_key: ec.EllipticCurvePrivateKey = field(repr=False)
    _ca_name: x509.Name = field(repr=False)

    def client(
        self, common_name: str, *, dns: tuple[str, ...] = (), uri: tuple[str, ...] = ()
    ) -> ClientCert:
        """A client certificate for `common_name` (and SANs), signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        san += [x509.UniformResourceIdentifier(u) for u in uri]
        cert = _cert(common_name, key, self._ca_key, self._ca_name, ca=False, san=san)
        return ClientCert(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    *,
    ca: bool,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory: Path) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("steward security test CA", ca_key, ca_key, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(
        "localhost",
        server_key,
        ca_key,
        ca.subject,
        ca=False,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "server.key").write_bytes(_pem_key(server_key))
    return Pki(
        directory,
        ca.public_bytes(pem),
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        ca_key,
        ca.subject,
    )
