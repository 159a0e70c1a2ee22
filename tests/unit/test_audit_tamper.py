"""Every tamper is caught with its own finding code; clean ledgers give zero findings."""

from __future__ import annotations

import pytest

from audit.trust import TrustRoot
from audit.verify import verify
from tests.audit_tamper import FORK, TAMPERS, Builder, Log


def _verify(log: Log, since: str | None = None, workers: int = 1) -> list[str]:
    report = verify(
        log.records, TrustRoot.from_json(log.trust), log.checkpoints, since, workers=workers
    )
    return [f.code for f in report.findings]


def test_clean_ledger_has_no_findings() -> None:
    log = Builder().clean().log()
    report = verify(log.records, TrustRoot.from_json(log.trust), log.checkpoints)
    assert [str(f) for f in report.findings] == []
    assert report.entries == len(log.records)
    assert report.verified_size == len(log.records)


def test_clean_ledger_with_workers_has_no_findings() -> None:
    log = Builder().clean().log()
    assert _verify(log, workers=2) == []


def test_clean_ledger_with_saved_checkpoint_has_no_findings() -> None:
    log = Builder().clean().log()
    assert _verify(log, since=log.checkpoints[0]) == []


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tamper_is_caught_with_its_own_code(name: str) -> None:
    code, make = TAMPERS[name]
    codes = _verify(make())
    assert code in codes, f"{name}: expected {code}, observed {codes}"


def test_fork_against_saved_checkpoint_is_caught() -> None:
    code, make = FORK
    log, saved = make()
    assert _verify(log) == []  # the rewritten log is consistent with itself ...
    assert code in _verify(log, since=saved)  # ... but not with what the auditor saw before


def test_each_tamper_has_a_distinct_code() -> None:
    codes = [c for c, _ in TAMPERS.values()] + [FORK[0]]
    assert len(codes) == len(set(codes))


def test_tampers_are_caught_with_workers() -> None:
    for name in ("swapped signature", "double counting", "reordered entries"):
        code, make = TAMPERS[name]
        assert code in _verify(make(), workers=2), name


def test_a_resume_the_proposer_signs_alone_is_a_threshold_finding() -> None:
    # The agent proposed the change and holds the approver role: it never counts (the
    # kill-switch release's THRESHOLD_NOT_MET tamper already holds that code in TAMPERS).
    b = Builder().clean()
    p, _ = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    b.ok(b.flow.pause(p))
    b.forge(b.flow.resume(p, ("agent",)))
    log = b.log()
    report = verify(log.records, TrustRoot.from_json(log.trust), log.checkpoints)
    found = [f for f in report.findings if f.code == "THRESHOLD_NOT_MET"]
    assert len(found) == 1 and found[0].seq == len(log.records) - 1, report.findings
    assert "agent:researcher-7" in found[0].message
