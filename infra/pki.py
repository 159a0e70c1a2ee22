"""A throwaway certificate authority for local runs: tests and benchmarks (`cryptography`).

One CA signs a server certificate for ``localhost``/127.0.0.1 and any client certificates a
caller asks for, each with a subject common name and optional DNS/URI subject alternative
names. Keys are ECDSA P-256, valid for an hour; nothing here is meant for production.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from infra.certificates import certificate, pem_certificate, pem_key
from infra.certificates import common_name as name


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
        cert = certificate(name(common_name), key, self._ca_name, self._ca_key, sans=san)
        return ClientCert(pem_certificate(cert), pem_key(key))


def make_pki(directory: Path) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("steward security test CA")
    ca = certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate(
        name("localhost"),
        server_key,
        ca_name,
        ca_key,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "server.key").write_bytes(pem_key(server_key))
    return Pki(
        directory,
        ca.public_bytes(pem),
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        ca_key,
        ca.subject,
    )
