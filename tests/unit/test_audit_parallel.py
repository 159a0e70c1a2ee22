"""The chunked and parallel paths of the auditor report exactly what one entry at a time would.

Chunks are shrunk to a few entries so that every tampered log spans many chunks: an entry's
verdicts must line up with it across chunk boundaries, keys granted in one chunk must serve the
next, and the pipeline (rules of chunk k folded while workers verify chunk k+1..) must not
reorder anything. Both kinds of worker are held to it: threads calling the native verifier,
and processes calling libsodium (the native verifier turned off).
"""

from __future__ import annotations

from typing import Any

import pytest

import steward_ed25519
from audit import verify as audit_verify
from audit.findings import Finding
from audit.formats import DOMAIN_PREFIX
from audit.signatures import verify_chunk
from audit.trust import TrustRoot
from audit.verify import verify
from tests.audit_tamper import FORK, TAMPERS, Builder, Log


def _findings(log: Log, workers: int, since: str | None = None) -> list[Finding]:
    report = verify(
        log.records, TrustRoot.from_json(log.trust), log.checkpoints, since, workers=workers
    )
    return report.findings


@pytest.fixture(params=["native threads", "processes, libsodium"])
def small_chunks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_verify, "CHUNK", 3)
    monkeypatch.setattr(audit_verify, "CHUNK_INLINE", 2)
    if request.param == "processes, libsodium":
        monkeypatch.setattr(steward_ed25519, "LIBRARY", None)
    else:
        assert steward_ed25519.LIBRARY is not None, "run `python -m infra.native build`"


def test_workers_are_native_threads_with_the_native_verifier_and_processes_without(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Builder().clean().log()
    submitted: list[int] = []
    real_submit = steward_ed25519.VerifierPool.submit

    def spy(self: steward_ed25519.VerifierPool, *args: Any) -> Any:
        submitted.append(len(args[2]))  # bodies in the batch
        return real_submit(self, *args)

    monkeypatch.setattr(steward_ed25519.VerifierPool, "submit", spy)
    assert _findings(log, workers=2) == []
    assert sum(submitted) == len(log.records), "every entry went to the native pool"
    submitted.clear()
    monkeypatch.setattr(steward_ed25519, "LIBRARY", None)
    assert _findings(log, workers=2) == []
    assert submitted == [], "without the native verifier: worker processes, no pool"


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_workers_and_inline_agree_on_every_tamper(name: str) -> None:
    code, make = TAMPERS[name]
    log = make()
    inline = _findings(log, workers=1)
    assert code in [f.code for f in inline], name
    assert _findings(log, workers=2) == inline


@pytest.mark.usefixtures("small_chunks")
def test_workers_and_inline_agree_on_clean_and_forked_logs() -> None:
    log = Builder().clean().log()
    assert _findings(log, workers=1) == [] == _findings(log, workers=2)
    code, make = FORK
    forked, saved = make()
    inline = _findings(forked, workers=1, since=saved)
    assert code in [f.code for f in inline]
    assert _findings(forked, workers=2, since=saved) == inline


def test_verify_chunk_gives_one_verdict_byte_per_signature() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body_a, body_b = b"\xc3\x01aaaa", b"\xc3\x01bbbb"
    sig_a = key.sign(DOMAIN_PREFIX + body_a[2:])
    sig_b = key.sign(DOMAIN_PREFIX + body_b[2:])
    # entry a: good; entry b: good, then a's signature (bad here), then a key unknown anywhere
    verdicts = verify_chunk(
        ([body_a, body_b], [1, 3], [pub, pub, pub, None], [sig_a, sig_b, sig_a, sig_b])
    )
    assert verdicts == bytes([1, 1, 0, 2])
