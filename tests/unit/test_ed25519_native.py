"""The native verifier (native/ed25519, curve25519-dalek) against libsodium, verdict by verdict.

Two implementations of strict Ed25519 must agree on every input, or the auditor would report
findings the ledger never made (or miss one). The cases: the edge cases of
tests/unit/test_ed25519_strict.py (small-order and mixed-order keys, non-canonical S, A and R,
wrong sizes), honest signatures with one bit flipped anywhere, and whole batches shaped as the
auditor sends them (several signatures per entry, unknown keys, bodies shorter than the bytes
skipped). scripts/setup installs the library; without it these tests fail, never skip.
"""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import steward_ed25519
from audit.ed25519 import verify as audit_verify
from audit.ed25519 import verify_libsodium
from audit.formats import DOMAIN_PREFIX
from audit.signatures import SigTask, verify_chunk, verify_chunk_libsodium
from tests.unit.test_ed25519_strict import Case
from tests.unit.test_ed25519_strict import cases as strict_cases  # noqa: F401  (a fixture)


def test_the_native_library_is_installed() -> None:
    assert steward_ed25519.LIBRARY is not None, (
        f"no native verifier at {steward_ed25519.library_path()}: "
        "run `python -m infra.native build` (scripts/setup does)"
    )


def _native(pub: bytes, sig: bytes, msg: bytes) -> bool:
    assert steward_ed25519.LIBRARY is not None
    return steward_ed25519.verify(pub, sig, msg)


def test_edge_cases_get_libsodiums_verdicts(strict_cases: list[Case]) -> None:  # noqa: F811
    verdicts = [
        (what, _native(p, s, m), verify_libsodium(p, s, m)) for what, p, s, m in strict_cases
    ]
    assert [v for v in verdicts if v[1] != v[2]] == []
    # Both outcomes occur, so agreement is not two verifiers refusing everything.
    assert {v[1] for v in verdicts} == {True, False}
    assert sum(1 for v in verdicts if v[1]) >= 8


def test_audit_verify_is_the_native_one() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key().public_bytes_raw()
    assert audit_verify(pub, key.sign(b"m"), b"m") is True
    assert audit_verify(pub, key.sign(b"m"), b"n") is False
    assert steward_ed25519.LIBRARY is not None


def test_one_flipped_bit_anywhere_gets_libsodiums_verdict() -> None:
    rng = random.Random(20261207)
    disagreements = []
    checked = 0
    for round_ in range(40):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        pub = key.public_key().public_bytes_raw()
        msg = rng.randbytes(rng.randrange(0, 300))
        sig = key.sign(msg)
        for _ in range(12):
            p, s, m = bytearray(pub), bytearray(sig), bytearray(msg)
            target = rng.choice((p, s, m) if m else (p, s))
            bit = rng.randrange(len(target) * 8)
            target[bit // 8] ^= 1 << (bit % 8)
            ours, theirs = (
                _native(bytes(p), bytes(s), bytes(m)),
                verify_libsodium(bytes(p), bytes(s), bytes(m)),
            )
            checked += 1
            if ours != theirs:
                disagreements.append((round_, bit, ours, theirs))
        assert _native(pub, sig, msg) and verify_libsodium(pub, sig, msg)
    assert checked == 480
    assert disagreements == []


def _batch(rng: random.Random) -> SigTask:
    """Entries as the auditor batches them: 1-3 signatures each, some keys unknown (None),
    some signatures wrong in size or in a byte, one body shorter than the 2 bytes skipped."""
    signers = [Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) for _ in range(4)]
    pubs_of = [k.public_key().public_bytes_raw() for k in signers]
    bodies: list[bytes] = []
    counts: list[int] = []
    pubs: list[bytes | None] = []
    sigs: list[bytes] = []
    for i in range(60):
        body = b"\x00\x01" + rng.randbytes(rng.randrange(0, 200)) if i != 7 else b"\x00"
        message = DOMAIN_PREFIX + body[2:]
        n = rng.choice((1, 1, 1, 2, 3))
        bodies.append(body)
        counts.append(n)
        for _ in range(n):
            k = rng.randrange(len(signers))
            sig = signers[k].sign(message)
            roll = rng.random()
            if roll < 0.08:
                pubs.append(None)
            elif roll < 0.14:
                pubs.append(pubs_of[k][:31])
            else:
                pubs.append(pubs_of[k])
            if 0.14 <= roll < 0.2:
                sig = sig[:63]
            elif 0.2 <= roll < 0.3:
                sig = sig[:10] + bytes([sig[10] ^ 4]) + sig[11:]
            elif 0.3 <= roll < 0.36:
                sig = signers[(k + 1) % len(signers)].sign(message)  # someone else's
            sigs.append(sig)
    return bodies, counts, pubs, sigs


def test_a_batch_gets_the_verdicts_of_the_libsodium_loop() -> None:
    rng = random.Random(7)
    for _ in range(5):
        task = _batch(rng)
        ours = steward_ed25519.verify_bodies(DOMAIN_PREFIX, 2, *task)
        assert ours == verify_chunk(task)
        theirs = verify_chunk_libsodium(task)
        assert ours == theirs
        assert set(ours) == {0, 1, 2}, "valid, refused and unknown-key verdicts all occur"


def test_a_clean_batch_takes_the_loopless_path_and_agrees() -> None:
    rng = random.Random(11)
    key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    pub = key.public_key().public_bytes_raw()
    bodies = [b"\x00\x01" + rng.randbytes(50) for _ in range(10)]
    sigs = [key.sign(DOMAIN_PREFIX + b[2:]) for b in bodies]
    sigs[3] = key.sign(b"something else")
    task: SigTask = (bodies, [1] * 10, [pub] * 10, sigs)
    assert steward_ed25519.verify_bodies(DOMAIN_PREFIX, 2, *task) == bytes([1, 1, 1, 0] + [1] * 6)
    assert verify_chunk_libsodium(task) == bytes([1, 1, 1, 0] + [1] * 6)


def test_an_empty_batch_is_empty() -> None:
    assert steward_ed25519.verify_bodies(DOMAIN_PREFIX, 2, [], [], [], []) == b""
    assert steward_ed25519.verify_bodies(DOMAIN_PREFIX, 2, [b"\x00\x01"], [0], [], []) == b""


@pytest.mark.parametrize(
    ("counts", "pubs", "sigs", "said"),
    [
        ([2], [bytes(32)], [bytes(64)], "counts summing to 2, 1 keys, 1 signatures"),
        ([1], [bytes(32), bytes(32)], [bytes(64)], "2 keys, 1 signatures"),
        ([1, 1], [bytes(32)], [bytes(64)], "1 bodies, 2 counts"),
    ],
)
def test_a_batch_that_does_not_add_up_is_refused_by_name(
    counts: list[int], pubs: list[bytes | None], sigs: list[bytes], said: str
) -> None:
    with pytest.raises(ValueError, match=said):
        steward_ed25519.verify_bodies(DOMAIN_PREFIX, 2, [b"\x00\x01x"], counts, pubs, sigs)


def test_an_empty_setting_turns_the_native_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(steward_ed25519.ENV, "")
    assert steward_ed25519.library_path() is None
    assert steward_ed25519._load() is None
    monkeypatch.setenv(steward_ed25519.ENV, "/nonexistent/libsteward_ed25519.so")
    assert steward_ed25519._load() is None


def test_the_pool_gives_the_verdicts_of_one_call_in_any_order_of_waiting() -> None:
    rng = random.Random(23)
    tasks = [_batch(rng) for _ in range(6)]
    expected = [steward_ed25519.verify_bodies(DOMAIN_PREFIX, 2, *t) for t in tasks]
    with steward_ed25519.VerifierPool(2) as pool:
        waits = [pool.submit(DOMAIN_PREFIX, 2, *t) for t in tasks]
        got = {i: waits[i]() for i in (3, 0, 5, 1, 4, 2)}
    assert [got[i] for i in range(6)] == expected


def test_a_pool_closed_with_batches_out_waits_for_them_and_then_refuses_more() -> None:
    rng = random.Random(29)
    task = _batch(rng)
    pool = steward_ed25519.VerifierPool(1)
    waits = [pool.submit(DOMAIN_PREFIX, 2, *task) for _ in range(4)]
    pool.close()  # the batches were still out: close waited for them before freeing anything
    pool.close()  # and a second close is harmless
    with pytest.raises(RuntimeError, match="already taken"):
        waits[0]()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(DOMAIN_PREFIX, 2, *task)


def test_a_batch_is_waited_for_once() -> None:
    rng = random.Random(31)
    with steward_ed25519.VerifierPool(1) as pool:
        wait = pool.submit(DOMAIN_PREFIX, 2, *_batch(rng))
        first = wait()
        with pytest.raises(RuntimeError, match="already taken"):
            wait()
    assert len(first) > 0


def test_a_pool_batch_that_does_not_add_up_is_refused_before_it_is_handed_over() -> None:
    with steward_ed25519.VerifierPool(1) as pool, pytest.raises(ValueError, match="not add up"):
        pool.submit(DOMAIN_PREFIX, 2, [b"\x00\x01x"], [2], [bytes(32)], [bytes(64)])
