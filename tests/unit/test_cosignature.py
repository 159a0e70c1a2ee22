"""C2SP tlog-cosignature v1 in the ledger (ledger.cosignature) and in the auditor
(audit.cosignature), against a cosignature a real litewitness made (tests/vectors) and against
each other; the trust root's witnesses and threshold (audit.trust)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.cosignature import cosigned_by, parse_witness_vkey
from audit.errors import AuditError
from audit.note import NoteError, parse_note
from audit.trust import TrustRoot
from ledger.c2sp_text import MalformedError
from ledger.checkpoint import Checkpoint, Signer, sign_checkpoint, verify_checkpoint
from ledger.cosignature import (
    WitnessKey,
    cosign,
    cosignature_lines,
    cosigned_note,
    verify_cosignatures,
)
from ledger.errors import VerificationError
from ledger.signed_note import split_note

VECTOR = json.loads(
    (Path(__file__).parents[1] / "vectors" / "cosignature-litewitness.json").read_text()
)


def _witness(name: str = "witness.example/w9") -> tuple[Ed25519PrivateKey, WitnessKey]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, WitnessKey(name, raw)


def _note(size: int = 7) -> tuple[Signer, str]:
    signer = Signer.generate("example.org/steward/unit")
    return signer, sign_checkpoint(Checkpoint(signer.name, size, bytes(range(32))), signer)


def test_a_real_litewitness_cosignature_verifies_in_the_ledger_and_the_auditor() -> None:
    key = WitnessKey.parse(VECTOR["witness_vkey"])
    assert key.vkey == VECTOR["witness_vkey"]  # the key ID rule (type 0x04) matches torchwood's
    text, _ = split_note(VECTOR["note"])
    (cosig,) = verify_cosignatures(cosignature_lines(VECTOR["response"]), text, [key])
    assert cosig.witness == "witness.example/w1" and cosig.timestamp > 1_600_000_000
    note = cosigned_note(VECTOR["note"], [cosig.line])
    good, bad = cosigned_by(parse_note(note), (parse_witness_vkey(VECTOR["witness_vkey"]),))
    assert (good, bad) == (["witness.example/w1"], [])


def test_a_changed_checkpoint_fails_both_verifiers() -> None:
    key = WitnessKey.parse(VECTOR["witness_vkey"])
    text, _ = split_note(VECTOR["note"])
    changed = text.replace("\n5\n", "\n6\n")
    with pytest.raises(VerificationError):
        verify_cosignatures(cosignature_lines(VECTOR["response"]), changed, [key])
    note = changed + "\n" + VECTOR["response"]
    good, bad = cosigned_by(parse_note(note), (parse_witness_vkey(VECTOR["witness_vkey"]),))
    assert (good, bad) == ([], ["witness.example/w1"])


def test_cosign_and_verify_round_trip_and_unknown_keys_are_ignored() -> None:
    signer, note = _note()
    text, _ = split_note(note)
    private, key = _witness()
    _, other = _witness("witness.example/other")
    line = cosign(text, key.name, private, 1_700_000_000)
    assert [c.timestamp for c in verify_cosignatures([line], text, [key])] == [1_700_000_000]
    assert verify_cosignatures([line], text, [other]) == []  # not its key: ignored
    # The cosigned note still verifies with the ledger's key, byte for byte the same text.
    cosigned = cosigned_note(note, [line, line])
    assert cosigned.startswith(note) and cosigned.count(line) == 1
    assert verify_checkpoint(cosigned, signer.verifier).size == 7


def test_a_signature_by_the_key_with_the_plain_note_algorithm_is_not_a_cosignature() -> None:
    # A witness key signs cosignatures only (type 0x04): a plain note signature (type 0x01) by
    # the same key has another key ID and is ignored.
    _, note = _note()
    text, _ = split_note(note)
    private, key = _witness()
    from ledger.signed_note import sign_note

    plain = sign_note(text, key.name, private).rsplit("\n", 2)[-2]
    assert verify_cosignatures([plain], text, [key]) == []


def test_a_forged_cosignature_is_refused() -> None:
    _, note = _note()
    text, _ = split_note(note)
    private, key = _witness()
    line = cosign(text, key.name, private, 1_700_000_000)
    raw = bytearray(base64.b64decode(line.split()[-1]))
    raw[5] ^= 1  # the timestamp: the signed message changes
    forged = f"{line.rsplit(' ', 1)[0]} {base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(VerificationError):
        verify_cosignatures([forged], text, [key])
    good, bad = cosigned_by(parse_note(note + forged + "\n"), (parse_witness_vkey(key.vkey),))
    assert (good, bad) == ([], [key.name])


def test_witness_vkeys_are_checked() -> None:
    signer, _ = _note()
    with pytest.raises(MalformedError, match="0x04"):
        WitnessKey.parse(signer.vkey)  # a log's vkey (type 0x01) is not a witness's
    with pytest.raises(NoteError):
        parse_witness_vkey(signer.vkey)
    _, key = _witness()
    wrong_id = key.vkey.replace(key.key_id.hex(), "00000000")
    with pytest.raises(MalformedError, match="key ID"):
        WitnessKey.parse(wrong_id)
    with pytest.raises(NoteError):
        parse_witness_vkey(wrong_id)
    assert parse_witness_vkey(key.vkey).vkey == key.vkey


def _trust(**extra: object) -> dict[str, object]:
    return {"roots": [{"principal": "human:ada@example.org", "public_key_hex": "00" * 32}], **extra}


def test_an_old_trust_root_names_no_witness() -> None:
    trust = TrustRoot.from_json(_trust())
    assert (trust.witnesses, trust.witness_threshold) == ((), 0)


def test_a_version_2_trust_root_names_witnesses_and_requires_all_by_default() -> None:
    keys = [_witness(f"witness.example/w{i}")[1] for i in range(3)]
    listed = [{"name": k.name, "vkey": k.vkey} for k in keys]
    trust = TrustRoot.from_json(_trust(version=2, witnesses=listed))
    assert [w.vkey for w in trust.witnesses] == [k.vkey for k in keys]
    assert trust.witness_threshold == 3
    assert TrustRoot.from_json(_trust(version=2, witnesses=listed, witness_threshold=2)) != trust
    for bad in (
        _trust(version=3),
        _trust(version=2, witnesses=listed, witness_threshold=4),
        _trust(version=2, witnesses=[{"name": "someone/else", "vkey": keys[0].vkey}]),
        _trust(version=2, witnesses=[listed[0], listed[0]]),
    ):
        with pytest.raises(AuditError):
            TrustRoot.from_json(bad)
