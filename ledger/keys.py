"""Ed25519 keys: create, save, load, sign, verify (docs/DESIGN.md §3.1).

``key_id`` is SHA-256 over the raw 32-byte public key; on the wire it is the 32 digest bytes,
for people it is their lowercase hex. Private keys are PKCS#8 PEM, optionally encrypted with a
passphrase; public keys are SubjectPublicKeyInfo PEM.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.ed25519 import verify_ed25519
from ledger.errors import BadKeyError
from ledger.formats import Signature, SignedEvent, signed_bytes


def key_id(public_raw: bytes) -> bytes:
    """SHA-256 of the raw public key (32 bytes)."""
    if len(public_raw) != 32:
        raise BadKeyError(f"an Ed25519 public key is 32 bytes, observed {len(public_raw)}")
    return hashlib.sha256(public_raw).digest()


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise BadKeyError(f"an Ed25519 public key is 32 bytes, observed {len(self.raw)}")

    @property
    def key_id(self) -> bytes:
        return key_id(self.raw)

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when `signature` is this key's Ed25519 signature over `message`."""
        return verify_ed25519(self.raw, signature, message)

    def to_pem(self) -> bytes:
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise BadKeyError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise BadKeyError(f"expected an Ed25519 public key, observed {type(key).__name__}")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


class PrivateKey:
    """An Ed25519 signing key. Its repr never shows secret material."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = PublicKey(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def __repr__(self) -> str:
        return f"PrivateKey(key_id={self.public.key_id_hex[:16]}…)"

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        """A deterministic key from 32 seed bytes (for test vectors only)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def key_id(self) -> bytes:
        return self.public.key_id

    @property
    def ed25519(self) -> Ed25519PrivateKey:
        """The underlying `cryptography` key, for APIs that take one (note signers)."""
        return self._key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def raw_private(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None) -> PrivateKey:
        try:
            key = serialization.load_pem_private_key(data, password=passphrase or None)
        except TypeError as exc:
            # cryptography says TypeError for "encrypted but no passphrase" and the reverse.
            raise BadKeyError(f"passphrase problem: {exc}") from exc
        except ValueError as exc:
            raise BadKeyError(
                f"cannot load the private key (wrong passphrase or not PEM): {exc}"
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise BadKeyError(f"expected an Ed25519 private key, observed {type(key).__name__}")
        return cls(key)

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the PKCS#8 PEM with mode 0600, refusing to overwrite an existing file."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.to_pem(passphrase))

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> PrivateKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadKeyError(f"cannot read key file {path}: {exc.strerror}") from exc
        return cls.from_pem(data, passphrase)


def sign_body(body_bytes: bytes, keys: list[PrivateKey] | tuple[PrivateKey, ...]) -> SignedEvent:
    """A SignedEvent carrying one signature per distinct key over the body's signed bytes,
    sorted by key id: the one encoding the ledger accepts (see :func:`canonical_signatures`)."""
    message = signed_bytes(body_bytes)
    return SignedEvent(
        body=body_bytes,
        signatures=canonical_signatures(
            Signature(key_id=k.key_id, sig=k.sign(message)) for k in keys
        ),
    )


def canonical_signatures(signatures: Iterable[Signature]) -> tuple[Signature, ...]:
    """`signatures` sorted by key id, the first of each key kept: one event, one encoding.

    Every signer (this module, ``steward sign``) builds its list through here, so what it hands
    out is the encoding the rules accept (``ledger.rules.signature_order_violation``)."""
    by_key: dict[bytes, Signature] = {}
    for s in signatures:
        by_key.setdefault(s.key_id, s)
    return tuple(by_key[k] for k in sorted(by_key))
