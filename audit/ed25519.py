"""Strict Ed25519 verification for the auditor (libsodium, through PyNaCl).

The auditor's own primitive, independent of the ledger's code. Strict means libsodium's rules:
the RFC 8032 equation (cofactorless), a canonical S (S < L), and a public key and R that are
canonically encoded and not of small order. A small-order key would let anyone produce
signatures that "verify" for some messages, so an entry signed that way is a finding even if a
laxer verifier would pass it. The `cryptography` package (OpenSSL) accepts a superset of what
this accepts (tests/unit/test_ed25519_strict.py).

libsodium releases the interpreter lock while it checks, and it is faster than OpenSSL's
Ed25519 here (docs/AUDIT.md "Speed").
"""

from __future__ import annotations

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public_key`'s valid Ed25519 signature over `message`."""
    if len(signature) != SIGNATURE_SIZE or len(public_key) != PUBLIC_KEY_SIZE:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except BadSignatureError:
        return False
    return True
