"""Strict Ed25519 (libsodium) against OpenSSL's (the `cryptography` package) on edge cases.

The ledger, the controller and the auditor verify with libsodium, or with Steward's native
verifier (steward_ed25519) when it is installed, which every case here holds to libsodium's
verdict; authors sign with `cryptography`. Two properties keep them in agreement:
- every honest signature verifies under both;
- whatever libsodium accepts, OpenSSL accepts too (it is the stricter one), so nothing the
  ledger stored can be refused by a verifier built on `cryptography`.
and libsodium refuses the cases that make a signature meaningless: a small-order public key
(it "signs" some messages for anyone), a non-canonical S (malleable) and non-canonical points.

The edge cases are built here with a small affine implementation of edwards25519 (RFC 8032
§5.1): slow, but only a few dozen points are needed.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import steward_ed25519
from audit.ed25519 import verify as audit_verify
from ledger.ed25519 import verify_ed25519 as ledger_verify

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def _recover_x(y: int, sign: int) -> int | None:
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = P - x
    return x


def _add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
        (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P,
    )


def _mul(k: int, a: Point) -> Point:
    out = IDENTITY
    while k:
        if k & 1:
            out = _add(out, a)
        a = _add(a, a)
        k >>= 1
    return out


def _encode(a: Point) -> bytes:
    x, y = a
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _neg(a: Point) -> Point:
    return ((-a[0]) % P, a[1])


_BY = 4 * pow(5, P - 2, P) % P
_BX = _recover_x(_BY, 0)
assert _BX is not None
B: Point = (_BX, _BY)


def _torsion_points() -> list[Point]:
    """The 8 points of small order: L·Q for points Q, until all eight are found."""
    found: set[Point] = {IDENTITY}
    y = 2
    while len(found) < 8:
        for sign in (0, 1):
            x = _recover_x(y, sign)
            if x is not None:
                found.add(_mul(L, (x, y)))
        y += 1
    return sorted(found)


TORSION = _torsion_points()


def _h(r: bytes, a: bytes, m: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + m).digest(), "little") % L


def _openssl_accepts(pub: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def _libsodium_accepts(pub: bytes, sig: bytes, msg: bytes) -> bool:
    ours = ledger_verify(pub, sig, msg)
    assert audit_verify(pub, sig, msg) is ours, "the ledger's and the auditor's verify disagree"
    batch = steward_ed25519.verify_items([(pub, sig, msg)] * 2)  # ledger.sigcheck's call
    assert batch == bytes([ours]) * 2, "the native batch and libsodium disagree"
    return ours


Case = tuple[str, bytes, bytes, bytes]  # (what, public key, signature, message)


def _honest_cases(rng: random.Random) -> list[Case]:
    out: list[Case] = []
    for i in range(8):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        pub = key.public_key().public_bytes_raw()
        msg = rng.randbytes(i * 37)
        out.append((f"honest {i}", pub, key.sign(msg), msg))
    return out


def _non_canonical_s(honest: list[Case]) -> list[Case]:
    out: list[Case] = []
    for what, pub, sig, msg in honest:
        s = int.from_bytes(sig[32:], "little") + L
        if s < 2**256:
            out.append((f"S+L of {what}", pub, sig[:32] + s.to_bytes(32, "little"), msg))
    return out


def _small_order_key_cases() -> list[Case]:
    """A = a point of small order, R = -k·A, S = 0: the cofactorless equation S·B = R + k·A
    holds; R is a torsion point chosen after k, so such a "signature" exists for any message.
    (k·A depends only on k mod 8, as 8·A is the identity.)"""
    out: list[Case] = []
    for ai, a in enumerate(TORSION):
        a_enc = _encode(a)
        for n in range(16):
            msg = f"anyone can sign this {n}".encode()
            for r in TORSION:
                r_enc = _encode(r)
                if _add(r, _mul(_h(r_enc, a_enc, msg) % 8, a)) == IDENTITY:
                    out.append((f"small-order key {ai}", a_enc, r_enc + bytes(32), msg))
                    break
    return out


def _mixed_order_key_cases(rng: random.Random) -> list[Case]:
    """A = a·B + T (T of order 8), signed honestly with a: the equation holds iff 8 | k."""
    out: list[Case] = []
    t = next(p for p in TORSION if _mul(4, p) != IDENTITY)  # order 8
    a = rng.randrange(1, L)
    a_pt = _add(_mul(a, B), t)
    a_enc = _encode(a_pt)
    for n in range(24):
        msg = f"mixed {n}".encode()
        r = rng.randrange(1, L)
        r_enc = _encode(_mul(r, B))
        s = (r + _h(r_enc, a_enc, msg) * a) % L
        out.append(
            (
                f"mixed-order key, k mod 8 = {_h(r_enc, a_enc, msg) % 8}",
                a_enc,
                r_enc + s.to_bytes(32, "little"),
                msg,
            )
        )
    return out


def _non_canonical_encodings() -> list[Case]:
    """y + p for the few y < 19 (the identity and the order-2/4 points among them)."""
    out: list[Case] = []
    for y in range(0, 19):
        enc = (y + P).to_bytes(32, "little")
        for sig_r in (enc, _encode(IDENTITY)):
            out.append((f"non-canonical A y={y}", enc, sig_r + bytes(32), b"m"))
            out.append((f"non-canonical R y={y}", _encode(IDENTITY), enc + bytes(32), b"m"))
    return out


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    rng = random.Random(20261126)
    honest = _honest_cases(rng)
    return (
        honest
        + _non_canonical_s(honest)
        + _small_order_key_cases()
        + _mixed_order_key_cases(rng)
        + _non_canonical_encodings()
    )


def test_the_torsion_points_are_the_eight_of_small_order() -> None:
    assert len(TORSION) == 8
    assert all(_mul(8, p) == IDENTITY for p in TORSION)
    assert sum(1 for p in TORSION if _mul(4, p) != IDENTITY) == 4  # four of order 8


def test_honest_signatures_verify_under_both(cases: list[Case]) -> None:
    honest = [c for c in cases if c[0].startswith("honest")]
    assert len(honest) == 8
    for what, pub, sig, msg in honest:
        assert _libsodium_accepts(pub, sig, msg), what
        assert _openssl_accepts(pub, sig, msg), what
        assert not _libsodium_accepts(pub, sig, msg + b"x"), what


def test_whatever_libsodium_accepts_openssl_accepts(cases: list[Case]) -> None:
    disagreements = [
        what
        for what, pub, sig, msg in cases
        if _libsodium_accepts(pub, sig, msg) and not _openssl_accepts(pub, sig, msg)
    ]
    assert disagreements == []


def test_small_order_keys_never_verify(cases: list[Case]) -> None:
    small = [c for c in cases if c[0].startswith("small-order key")]
    assert len({c[1] for c in small}) == 8, "a forged case for each small-order key"
    # The cofactorless equation holds for every one of them (a lax verifier accepts some) ...
    assert any(_openssl_accepts(pub, sig, msg) for _, pub, sig, msg in small)
    # ... and libsodium refuses them all.
    assert [what for what, pub, sig, msg in small if _libsodium_accepts(pub, sig, msg)] == []


def test_non_canonical_s_never_verifies(cases: list[Case]) -> None:
    high_s = [c for c in cases if c[0].startswith("S+L")]
    assert high_s
    assert [what for what, pub, sig, msg in high_s if _libsodium_accepts(pub, sig, msg)] == []


def test_non_canonical_points_never_verify(cases: list[Case]) -> None:
    nc = [c for c in cases if c[0].startswith("non-canonical")]
    assert [what for what, pub, sig, msg in nc if _libsodium_accepts(pub, sig, msg)] == []


def test_mixed_order_keys_follow_the_cofactorless_equation(cases: list[Case]) -> None:
    mixed = [c for c in cases if c[0].startswith("mixed-order")]
    assert {c[0].endswith("= 0") for c in mixed} == {True, False}, "both outcomes are covered"
    for what, pub, sig, msg in mixed:
        holds = what.endswith("= 0")
        assert _libsodium_accepts(pub, sig, msg) is holds, what
        assert _openssl_accepts(pub, sig, msg) is holds, what


def test_wrong_sizes_are_refused_not_raised() -> None:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    sig = key.sign(b"m")
    for p, s in ((pub[:31], sig), (pub + b"\0", sig), (pub, sig[:63]), (pub, sig + b"\0")):
        assert ledger_verify(p, s, b"m") is False
        assert audit_verify(p, s, b"m") is False
