"""The auditor's witness checks (step 7): a checkpoint it relies on needs the trust root's
threshold of valid cosignatures; CHECKPOINT_UNWITNESSED in a file, pending in a live log;
COSIGNATURE_BAD_SIGNATURE for a cosignature by a trusted witness that does not verify."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.trust import TrustRoot
from audit.verify import verify
from ledger.cosignature import WitnessKey, cosign, cosigned_note
from ledger.signed_note import split_note
from tests.audit_tamper import Builder, Log

WITNESSES = [Ed25519PrivateKey.generate() for _ in range(2)]
NAMES = ["witness.example/w1", "witness.example/w2"]


def _key(i: int) -> WitnessKey:
    raw = WITNESSES[i].public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return WitnessKey(NAMES[i], raw)


def _cosigned(note: str, by: list[int]) -> str:
    text, _ = split_note(note)
    return cosigned_note(note, [cosign(text, NAMES[i], WITNESSES[i], 1_767_225_600) for i in by])


def _trust(log: Log, threshold: int | None = None) -> TrustRoot:
    doc = dict(log.trust)
    doc["version"] = 2
    doc["witnesses"] = [{"name": NAMES[i], "vkey": _key(i).vkey} for i in range(2)]
    if threshold is not None:
        doc["witness_threshold"] = threshold
    return TrustRoot.from_json(doc)


def _log(newest_by: list[int]) -> Log:
    log = Builder().clean().log()
    notes = [_cosigned(n, [0, 1]) for n in log.checkpoints[:-1]]
    return Log(log.records, [*notes, _cosigned(log.checkpoints[-1], newest_by)], log.trust)


def test_every_checkpoint_cosigned_by_both_verifies() -> None:
    log = _log([0, 1])
    report = verify(log.records, _trust(log), log.checkpoints, tail="finding")
    assert [str(f) for f in report.findings] == []
    assert report.verified_size == len(log.records)


def test_the_newest_checkpoint_short_of_the_threshold_is_a_finding_in_a_file() -> None:
    log = _log([0])
    report = verify(log.records, _trust(log), log.checkpoints, tail="finding")
    assert [f.code for f in report.findings] == ["CHECKPOINT_UNWITNESSED"]
    assert "1 of the 2" in str(report.findings[0])
    # One of two is enough when the trust root says so.
    assert verify(log.records, _trust(log, 1), log.checkpoints, tail="finding").ok


def test_in_a_live_log_entries_past_the_newest_witnessed_checkpoint_are_pending() -> None:
    log = _log([])
    report = verify(log.records, _trust(log), log.checkpoints, tail="pending")
    assert report.ok and report.pending is not None
    assert report.verified_size < len(log.records) and report.pending[1] == len(log.records) - 1


def test_a_trust_root_without_witnesses_needs_no_cosignature() -> None:
    log = Builder().clean().log()
    assert verify(log.records, TrustRoot.from_json(log.trust), log.checkpoints).ok


def test_a_bad_cosignature_by_a_trusted_witness_is_a_finding() -> None:
    log = _log([0, 1])
    # Witness 2's line moved onto another checkpoint: it names the key but does not verify.
    first_line = log.checkpoints[0].splitlines()[-1]
    moved = log.checkpoints[-1].replace(log.checkpoints[-1].splitlines()[-1], first_line)
    checkpoints = [*log.checkpoints[:-1], moved]
    report = verify(log.records, _trust(log, 1), checkpoints, tail="finding")
    assert "COSIGNATURE_BAD_SIGNATURE" in [f.code for f in report.findings]
