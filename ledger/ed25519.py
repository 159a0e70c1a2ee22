"""Strict Ed25519 verification (libsodium), the one primitive every ledger check goes through.

Kept apart from ledger.keys so that a verification worker process (ledger.sigcheck) imports
nothing but libsodium's bindings.
"""

from __future__ import annotations

from collections.abc import Sequence

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32


def verify_ed25519(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature by `public_raw` over `message`.

    Strict verification (libsodium's): besides the RFC 8032 equation (cofactorless) it refuses
    a non-canonical S (S >= L), a small-order or non-canonically encoded public key, and a
    small-order R. OpenSSL (the `cryptography` package, which signs) accepts a superset of
    these, so whatever passes here passes there too (tests/unit/test_ed25519_strict.py); a
    small-order key would let anyone "sign" some messages, hence it never verifies.

    libsodium releases the interpreter lock while it checks.
    """
    if len(signature) != SIGNATURE_SIZE or len(public_raw) != PUBLIC_KEY_SIZE:
        return False
    try:
        crypto_sign_open(bytes(signature) + bytes(message), bytes(public_raw))
    except BadSignatureError:
        return False
    return True


def verify_many(items: Sequence[tuple[bytes, bytes, bytes]]) -> bytes:
    """One byte per (public key, signature, message): 1 when it verifies, else 0."""
    out = bytearray(len(items))
    sign_open, bad = crypto_sign_open, BadSignatureError
    for i, (public_raw, signature, message) in enumerate(items):
        if len(signature) == SIGNATURE_SIZE and len(public_raw) == PUBLIC_KEY_SIZE:
            try:
                sign_open(signature + message, public_raw)
                out[i] = 1
            except bad:
                pass
    return bytes(out)
