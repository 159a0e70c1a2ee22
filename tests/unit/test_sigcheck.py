"""The signature-checking worker (ledger.sigworker) and its driver (ledger.sigcheck).

Real worker processes: the verdicts must be the same wherever they are computed, in order,
and a worker that dies, hangs or answers nonsense must cost nothing but a fallback.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import steward_ed25519
from ledger.ed25519 import verify_many
from ledger.sigcheck import SignatureChecker, SignatureWorkerError
from ledger.sigworker import decode_items, encode_request, serve


def _items(n: int, bad: set[int]) -> list[tuple[bytes, bytes, bytes]]:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key().public_bytes_raw()
    out = []
    for i in range(n):
        msg = f"event {i}".encode() * (i % 7 + 1)
        sig = key.sign(msg)
        if i in bad:
            sig = sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]
        out.append((pub, sig, msg))
    return out


def test_request_round_trip_and_short_fields_are_sure_refusals() -> None:
    items = [*_items(5, set()), (b"\x01" * 31, b"\x02" * 64, b"m"), (b"\x01" * 32, b"", b"")]
    payload = encode_request(items)[4:]
    decoded = decode_items(payload)
    assert decoded[:5] == items[:5]
    assert decoded[5] == (bytes(32), bytes(64), b"m")
    assert verify_many(decoded) == bytes([1, 1, 1, 1, 1, 0, 0])


def test_worker_loop_answers_each_request_in_order() -> None:
    items = _items(40, {3, 39})
    inp = io.BytesIO(encode_request(items) + encode_request(items[:2]) + encode_request([]))
    out = io.BytesIO()
    assert serve(inp, out) == 0
    data = out.getvalue()
    expected = bytes(0 if i in {3, 39} else 1 for i in range(40))
    assert data == (
        len(items).to_bytes(4, "big") + expected + (2).to_bytes(4, "big") + b"\1\1" + bytes(4)
    )


def test_malformed_request_ends_the_worker_with_status_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ledger.sigworker"],
        input=(200).to_bytes(4, "big") + b"x" * 200,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"malformed request" in proc.stderr


@pytest.fixture
def checker() -> Iterator[SignatureChecker]:
    c = SignatureChecker(1, min_pooled=8, timeout=20, native=False)
    yield c
    c.close()


def test_pooled_verdicts_match_in_process_verdicts(checker: SignatureChecker) -> None:
    items = _items(300, {0, 17, 299})
    assert checker.check(items) == [i not in {0, 17, 299} for i in range(300)]
    assert checker.worker_pid() is not None, "a batch this large went to the worker"
    assert checker.check(items[:5]) == [False, True, True, True, True]  # small: in process
    assert checker.fallbacks == 0


def test_a_killed_worker_costs_one_fallback_and_is_replaced(checker: SignatureChecker) -> None:
    items = _items(64, {5})
    expected = [i != 5 for i in range(64)]
    assert checker.check(items) == expected
    first = checker.worker_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert checker.check(items) == expected  # verified in process this time
    assert checker.fallbacks == 1
    assert checker.check(items) == expected  # a fresh worker
    second = checker.worker_pid()
    assert second is not None and second != first
    assert checker.fallbacks == 1


def test_a_hung_worker_is_given_up_after_the_timeout() -> None:
    c = SignatureChecker(1, min_pooled=8, timeout=1.0, native=False)
    try:
        items = _items(16, {2})
        assert c.check(items) == [i != 2 for i in range(16)]
        pid = c.worker_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            assert c.check(items) == [i != 2 for i in range(16)]
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # killed and reaped by the checker, as it should be
        assert c.fallbacks == 1
        assert c.worker_pid() != pid
    finally:
        c.close()


def test_no_worker_when_asked_for_none() -> None:
    c = SignatureChecker(0, min_pooled=1)
    assert c.check(_items(50, {1}))[:3] == [True, False, True]
    assert c.worker_pid() is None
    c.close()


def test_close_ends_the_worker(checker: SignatureChecker) -> None:
    checker.check(_items(20, set()))
    pid = checker.worker_pid()
    assert pid is not None
    checker.close()
    assert checker.worker_pid() is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended and reaped by close(): the pid is gone
    assert checker.check(_items(20, {0}))[0] is False  # still answers, in process


def test_the_native_checker_gives_the_workers_verdicts(checker: SignatureChecker) -> None:
    """The same batch through steward_ed25519 in the calling thread and through the libsodium
    worker: forged signatures, a wrong-size key and signature, an empty batch."""
    native = SignatureChecker(1, min_pooled=8, native=True)
    items = _items(200, {0, 3, 150, 199})
    public, signature, message = items[10]
    items[20] = (public[:31], signature, message)
    items[30] = (public, signature + b"\x00", message)
    verdicts = native.check(items)
    assert verdicts == checker.check(items)
    assert verdicts == [i not in {0, 3, 150, 199, 20, 30} for i in range(200)]
    assert native.check([]) == []
    assert native.worker_pid() is None  # nothing was started for it
    native.close()


def test_the_checker_uses_the_native_verifier_when_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SignatureChecker(1).native, "run `python -m infra.native build`"
    monkeypatch.setattr(steward_ed25519, "LIBRARY", None)
    assert not SignatureChecker(1).native
    with pytest.raises(SignatureWorkerError, match="native verifier is not installed"):
        SignatureChecker(1, native=True)
