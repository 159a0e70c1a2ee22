"""Strict Ed25519 verification for the auditor (libsodium, through PyNaCl).

The auditor's own primitive, independent of the ledger's code. Strict means libsodium's rules:
the RFC 8032 equation (cofactorless), a canonical S (S < L), and a public key and R that are
canonically encoded and not of small order. A small-order key would let anyone produce
signatures that "verify" for some messages, so an entry signed that way is a finding even if a
laxer verifier would pass it. The `cryptography` package (OpenSSL) accepts a superset of what
this accepts (tests/unit/test_ed25519_strict.py).

Two implementations of the same rules: the native one (curve25519-dalek, built from
native/ed25519, steward_ed25519; the ledger uses it too) when installed, else libsodium. Both
release the interpreter lock while they check; tests/unit/test_ed25519_native.py holds them to
the same verdicts (docs/AUDIT.md "Speed").
"""

from __future__ import annotations

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

import steward_ed25519

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public_key`'s valid Ed25519 signature over `message`."""
    if steward_ed25519.LIBRARY is not None:
        return steward_ed25519.verify(public_key, signature, message)
    return verify_libsodium(public_key, signature, message)


def verify_libsodium(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """:func:`verify` through libsodium, whether or not the native verifier is installed."""
    if len(signature) != SIGNATURE_SIZE or len(public_key) != PUBLIC_KEY_SIZE:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except BadSignatureError:
        return False
    return True
