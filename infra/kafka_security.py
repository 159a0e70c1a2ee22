"""A secured local Kafka: a throwaway CA, SCRAM-SHA-512 users, and the KRaft ACL authorizer.

`KafkaSecurity` is what `infra.kafka_cluster.KafkaCluster(security=...)` needs to start brokers that
clients reach only over TLS:

- ``SASL_SSL`` (the bootstrap listener): TLS with the CA's broker certificate (SAN
  ``IP:127.0.0.1`` and ``DNS:localhost``), then SCRAM-SHA-512; the principal is ``User:<name>``.
- ``SSL``: mutual TLS (a client certificate is required); the certificate's CN is the principal
  (``ssl.principal.mapping.rules``), so `client_certificate("ledger")` gives ``User:ledger``.
- ``INTERNAL`` (inter-broker) and ``CONTROLLER`` stay PLAINTEXT on 127.0.0.1: their principal is
  ``User:ANONYMOUS``, a super user with the admin. That is a test convenience of one machine (any
  local process could use those ports); a production cluster secures them too.

The authorizer is ``org.apache.kafka.metadata.authorizer.StandardAuthorizer`` with
``allow.everyone.if.no.acl.found=false``: a principal may do exactly what its ACLs allow.
SCRAM users are created when the storage is formatted (``StorageTool format --add-scram``), so
they exist before the first broker starts. Passwords are random per cluster and never written to
a properties file (only the SCRAM salted hashes land in the formatted metadata log).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRAM_MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
# The broker's own principal on the PLAINTEXT inter-broker and controller listeners.
BROKER_PRINCIPAL = "User:ANONYMOUS"


@dataclass
class CertificateAuthority:
    """A throwaway CA on disk: ``ca.pem`` and the key that signs leaf certificates."""

    directory: Path
    common_name: str = "steward-test-ca"
    _key: Any = field(default=None, init=False, repr=False)
    _cert: Any = field(default=None, init=False, repr=False)

    @property
    def cert_file(self) -> Path:
        return self.directory / "ca.pem"

    def create(self) -> CertificateAuthority:
        from infra.certificates import certificate, common_name, new_key, pem_certificate

        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = new_key()
        name = common_name(self.common_name)
        self._cert = certificate(name, self._key, name, self._key, ca=True, days=2)
        self.cert_file.write_bytes(pem_certificate(self._cert))
        return self

    def issue(self, name: str, *, server: bool) -> tuple[Path, Path]:
        """A leaf certificate and its unencrypted PKCS#8 key, as ``<name>.pem``/``<name>.key``.

        Server certificates carry ``IP:127.0.0.1`` and ``DNS:localhost`` (clients check the
        host name); client certificates have CN `name` (the principal on the SSL listener).
        """
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        from infra.certificates import certificate, common_name, new_key, pem_certificate, pem_key

        key = new_key()
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        cert = certificate(
            common_name(name),
            key,
            self._cert.subject,
            self._key,
            sans=sans if server else (),
            usage=[ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
            days=2,
        )
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        key_file.write_bytes(pem_key(key))
        key_file.chmod(0o600)
        cert_file.write_bytes(pem_certificate(cert))
        return cert_file, key_file


@dataclass
class KafkaSecurity:
    """SCRAM users (name -> password) and the TLS material of one secured cluster.

    `users` are created at format time besides the admin (a super user). Passwords are random
    unless given. Call `prepare(directory)` before the brokers' configs are written.
    """

    users: dict[str, str] = field(default_factory=dict)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    ca: CertificateAuthority | None = field(default=None, init=False)
    broker_cert: tuple[Path, Path] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.users = {name: (pw or secrets.token_urlsafe(18)) for name, pw in self.users.items()}

    def __repr__(self) -> str:  # passwords stay out of every log line
        return f"KafkaSecurity(users={sorted(self.users)})"

    def password(self, user: str) -> str:
        return self.admin_password if user == ADMIN_USER else self.users[user]

    def prepare(self, directory: Path) -> None:
        """Make the CA and the brokers' certificate under `directory` (once)."""
        if self.ca is None:
            self.ca = CertificateAuthority(directory).create()
            self.broker_cert = self.ca.issue("broker", server=True)

    def client_certificate(self, name: str) -> tuple[Path, Path]:
        """A client certificate for the SSL listener; its principal is ``User:<name>``."""
        assert self.ca is not None, "prepare() first"
        return self.ca.issue(name, server=False)

    @property
    def ca_file(self) -> Path:
        assert self.ca is not None, "prepare() first"
        return self.ca.cert_file

    def format_arguments(self) -> list[str]:
        """StorageTool format arguments creating every SCRAM user before the first start."""
        out: list[str] = []
        for name, password in {ADMIN_USER: self.admin_password, **self.users}.items():
            out += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        return out

    def server_properties(
        self, *, internal_port: int, sasl_ssl_port: int, ssl_port: int, controller_port: int
    ) -> dict[str, str]:
        """The listener, TLS, SASL and authorizer settings of one node."""
        assert self.broker_cert is not None, "prepare() first"
        cert, key = self.broker_cert
        host = "127.0.0.1"
        return {
            "listeners": (
                f"INTERNAL://{host}:{internal_port},SASL_SSL://{host}:{sasl_ssl_port},"
                f"SSL://{host}:{ssl_port},CONTROLLER://{host}:{controller_port}"
            ),
            "advertised.listeners": (
                f"INTERNAL://{host}:{internal_port},"
                f"SASL_SSL://{host}:{sasl_ssl_port},SSL://{host}:{ssl_port}"
            ),
            "listener.security.protocol.map": (
                "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL"
            ),
            "inter.broker.listener.name": "INTERNAL",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self._keystore(cert, key)),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "listener.name.ssl.ssl.client.auth": "required",
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "authorizer.class.name": AUTHORIZER,
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"{BROKER_PRINCIPAL};User:{ADMIN_USER}",
        }

    def _keystore(self, cert: Path, key: Path) -> Path:
        """Kafka's PEM keystore: the private key followed by the certificate chain."""
        store = cert.with_name("broker-keystore.pem")
        if not store.exists():
            store.write_bytes(key.read_bytes() + cert.read_bytes())
            store.chmod(0o600)
        return store

    def client_options(self, user: str = ADMIN_USER) -> dict[str, Any]:
        """kafka-python options for `user` over SASL_SSL (includes the password)."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.password(user),
            "ssl_cafile": str(self.ca_file),
        }
