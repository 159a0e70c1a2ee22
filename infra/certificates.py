"""X.509 certificates for the throwaway PKIs of local runs (`cryptography`, EC P-256).

One builder serves the local control plane's PKI (infra.kube_pki), the ledger's mutual-TLS test
CA (infra.pki) and the secured Kafka brokers' CA (infra.kafka_security): the same extensions
every TLS stack here accepts (Go's for Kubernetes, Java's for Kafka, BoringSSL's for gRPC).
Nothing here is meant for production.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def new_key() -> ec.EllipticCurvePrivateKey:
    """EC P-256: quick to generate, accepted by every client and server here."""
    return ec.generate_private_key(ec.SECP256R1())


def common_name(cn: str, *, organization: str | None = None) -> x509.Name:
    attributes = (
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    )
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: Sequence[x509.GeneralName] = (),
    usage: Sequence[x509.ObjectIdentifier] = (),
    days: int | None = None,
) -> x509.Certificate:
    """`subject`'s certificate for `key`, signed by `issuer_key` (self-signed when `issuer` is
    `subject`). Valid from five minutes ago (clocks of child processes) for `days` (30 for a
    leaf, 365 for a CA); key usage for a CA or a TLS leaf, the given SANs and extended usages."""
    now = dt.datetime.now(dt.UTC)
    days = days if days is not None else (365 if ca else 30)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem_certificate(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
