"""Several records claiming one seq: the auditor folds the one the evidence names, whatever the
order they arrive in, and reports each other one once, by its position in the source.

A record written around the ledger server (straight into the Kafka topic, or into an export)
can claim the seq of a real entry and arrive before it. The chain member is the record whose
leaf hash the next entry's prev (or the checkpoint root) confirms; the other is reported as
inserted, and nothing cascades from it (no PREV_MISMATCH on the next entry, no rule findings).
"""

from __future__ import annotations

import pytest

from audit import verify as audit_verify
from audit.findings import Finding
from audit.trust import TrustRoot
from audit.verify import verify
from ledger.formats import HealthReported, Metric, make_entry
from ledger.keys import PrivateKey
from tests.audit_tamper import Builder, Log

SEQ = 10  # a health report of the clean story; seq 11 follows it


def _findings(log: Log, workers: int = 1) -> list[Finding]:
    return verify(
        log.records, TrustRoot.from_json(log.trust), log.checkpoints, workers=workers
    ).findings


def _forged_for(b: Builder, seq: int, *, stranger: bool = False) -> bytes:
    """A well-formed entry claiming `seq` with the right prev; signed by the ledger's monitor
    (signatures that verify) or by a key the ledger never granted."""
    real = b.entries[seq]
    if stranger:
        event = b.flow.signed_by_keys(_health(b), PrivateKey.from_seed(bytes(range(32))))
    else:
        event = b.flow.health(b.p1, 0, True)
    return make_entry(seq, real.entry.prev, event, real.entry.received_at).entry_bytes


def _health(b: Builder) -> HealthReported:
    return HealthReported(b.p1, 0, True, (Metric("error_rate", 0.5),))


def _one(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [str(f) for f in findings]
    return findings[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_forged_before_real_names_the_forged_record(workers: int) -> None:
    b = Builder().clean()
    log = b.log()
    log.records.insert(
        SEQ, _forged_for(b, SEQ)
    )  # record #SEQ is the forgery, #SEQ+1 the real entry
    f = _one(_findings(log, workers))
    assert (f.code, f.seq, f.record) == ("ENTRY_INSERTED", SEQ, SEQ)
    assert f"record #{SEQ + 1}" in f.message and "next entry's prev" in f.message, f.message


@pytest.mark.parametrize("workers", [1, 2])
def test_real_before_forged_names_the_forged_record(workers: int) -> None:
    b = Builder().clean()
    log = b.log()
    log.records.insert(SEQ + 1, _forged_for(b, SEQ))
    f = _one(_findings(log, workers))
    assert (f.code, f.seq, f.record) == ("ENTRY_INSERTED", SEQ, SEQ + 1)
    assert f"record #{SEQ}" in f.message, f.message


def test_forgery_by_an_unknown_key_before_real() -> None:
    b = Builder().clean()
    log = b.log()
    log.records.insert(SEQ, _forged_for(b, SEQ, stranger=True))
    f = _one(_findings(log))
    assert (f.code, f.seq, f.record) == ("ENTRY_INSERTED", SEQ, SEQ)


def test_two_forgeries_before_real_are_each_reported_once() -> None:
    b = Builder().clean()
    log = b.log()
    log.records[SEQ:SEQ] = [_forged_for(b, SEQ, stranger=True), _forged_for(b, SEQ)]
    findings = _findings(log)
    assert [(f.code, f.seq, f.record) for f in findings] == [
        ("ENTRY_INSERTED", SEQ, SEQ),
        ("ENTRY_INSERTED", SEQ, SEQ + 1),
    ]


def test_undecodable_record_before_real_keeps_its_decode_code_and_cascades_nothing() -> None:
    b = Builder().clean()
    log = b.log()
    log.records.insert(SEQ, b"\xc3\x01not an entry at all")
    f = _one(_findings(log))
    assert (f.code, f.seq, f.record) == ("UNKNOWN_FINGERPRINT", SEQ, SEQ)
    assert f"the chain holds record #{SEQ + 1}" in f.message, f.message


def test_forged_last_entry_is_told_apart_by_the_checkpoint_root() -> None:
    b = Builder().clean()
    log = b.log()
    last = len(log.records) - 1  # no next entry: only the checkpoint at size last+1 can tell
    log.records.insert(last, _forged_for(b, last))
    f = _one(_findings(log))
    assert (f.code, f.seq, f.record) == ("ENTRY_INSERTED", last, last)
    assert f"checkpoint root at size {last + 1}" in f.message, f.message


def test_identical_copy_before_the_next_entry_is_a_duplicate() -> None:
    log = Builder().clean().log()
    log.records.insert(SEQ + 1, log.records[SEQ])
    f = _one(_findings(log))
    assert (f.code, f.seq, f.record) == ("ENTRY_DUPLICATED", SEQ, SEQ + 1)


def test_without_other_evidence_the_first_valid_record_is_kept() -> None:
    """Two validly signed records with the right prev for the last seq and no checkpoint at
    that size: nothing tells them apart, so arrival order decides (and says so)."""
    b = Builder().clean()
    log = b.log()
    last = len(log.records) - 1
    log.checkpoints = log.checkpoints[:-1]  # no checkpoint commits to the last entry
    log.records.append(_forged_for(b, last))
    f = _one(_findings(log))
    assert (f.code, f.seq, f.record) == ("ENTRY_INSERTED", last, last + 1)
    assert "arrived first" in f.message, f.message


@pytest.mark.parametrize("where", ["before", "after"])
def test_workers_and_small_chunks_agree_with_one_process(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setattr(audit_verify, "CHUNK", 3)
    monkeypatch.setattr(audit_verify, "CHUNK_INLINE", 2)
    b = Builder().clean()
    log = b.log()
    log.records.insert(SEQ if where == "before" else SEQ + 1, _forged_for(b, SEQ, stranger=True))
    log.records.insert(3, b"\xc3\x01not an entry at all")
    inline = _findings(log, workers=1)
    assert [f.code for f in inline] == ["UNKNOWN_FINGERPRINT", "ENTRY_INSERTED"], [
        str(f) for f in inline
    ]
    assert _findings(log, workers=2) == inline
