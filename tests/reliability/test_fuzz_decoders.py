"""Fuzz every decoder: garbage and mutated valid inputs raise only the documented error types.

Seeds are the committed ledger vectors (entries and bodies of every event type) and a signed
checkpoint, note and tlog-proof made here; hypothesis mutates them (bit flips, truncation,
insertions, splices) and also feeds raw bytes/text. A decoder may accept a mutated input (some
mutations keep it valid) but must never raise anything else: an unexpected exception in a
decoder becomes an INTERNAL status in the server or a crash in the auditor.

Examples per test: ``STEWARD_FUZZ_EXAMPLES`` (default 300).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit import formats as audit_formats
from audit import note as audit_note
from audit.errors import DecodeError
from ledger import c2sp_text, signed_note, tlog_proof
from ledger import checkpoint as lcp
from ledger import formats as lf
from ledger.errors import FormatError, VerificationError
from ledger.keys import PrivateKey
from ledger.merkle import MerkleTree
from tests.helpers.mutations import mutated

EXAMPLES = int(os.environ.get("STEWARD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "ledger-vectors.json").read_text()
)
ENTRIES = [bytes.fromhex(e["entry_hex"]) for e in VECTORS["entries"]]
BODIES = [bytes.fromhex(e["body_hex"]) for e in VECTORS["entries"]]
SIGNED_EVENTS = [
    lf.encode_signed_event(lf.SignedEvent(d.body, d.signatures))
    for d in map(lf.decode_entry, ENTRIES)
]


def _notes() -> tuple[str, str, str, str]:
    key = PrivateKey.from_seed(bytes(range(32)))
    signer = lcp.Signer("steward.dev/ledger/fuzz", key.ed25519)
    tree = MerkleTree()
    for raw in ENTRIES:
        tree.append(lf.decode_log_entry(raw).leaf_hash)
    note = lcp.sign_checkpoint(
        lcp.Checkpoint("steward.dev/ledger/fuzz", tree.size, tree.root()), signer
    )
    proof = tlog_proof.write_tlog_proof(3, tree.inclusion_proof(3, tree.size), note)
    return signer.vkey, note, note.split("\n\n", 1)[0] + "\n", proof


VKEY, NOTE, CHECKPOINT_TEXT, TLOG_PROOF = _notes()


# -- mutation strategies ---------------------------------------------------------------------


def inputs(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    # Keep the 10-byte single-object header valid half of the time so the Avro decoder is reached.
    header = seeds[0][:10]
    return st.one_of(
        mutated(seeds),
        st.binary(max_size=512),
        st.binary(max_size=512).map(lambda b: header + b),
    )


@st.composite
def text_mutated(draw: st.DrawFn, seeds: list[str]) -> str:
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(("insert", "delete", "replace", "truncate", "newline")))
        if op == "insert":
            text = text[:at] + draw(st.text(max_size=8)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        elif op == "replace" and at < len(text):
            text = text[:at] + draw(st.characters()) + text[at + 1 :]
        elif op == "truncate":
            text = text[:at]
        else:
            text = (
                text[:at]
                + draw(st.sampled_from(("\n", "\n\n", "\r\n", " ", "\u2014 ")))
                + text[at:]
            )
    return text


def text_inputs(seeds: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(text_mutated(seeds), st.text(max_size=300))


def only(errors: tuple[type[BaseException], ...], fn: Callable[[Any], Any], value: Any) -> None:
    try:
        fn(value)
    except errors:
        pass


# -- ledger.formats ----------------------------------------------------------------------------


@FUZZ
@given(inputs(BODIES))
def test_ledger_decode_body(data: bytes) -> None:
    only((FormatError,), lf.decode_body, data)


@FUZZ
@given(inputs(ENTRIES))
def test_ledger_decode_entry_and_log_entry(data: bytes) -> None:
    only((FormatError,), lf.decode_entry, data)
    only((FormatError,), lf.decode_log_entry, data)


@FUZZ
@given(inputs(SIGNED_EVENTS))
def test_ledger_decode_signed_event(data: bytes) -> None:
    only((FormatError,), lf.decode_signed_event, data)


@FUZZ
@given(inputs(BODIES))
def test_ledger_signed_bytes(data: bytes) -> None:
    only((FormatError,), lf.signed_bytes, data)


# -- ledger.checkpoint, ledger.signed_note, ledger.tlog_proof ----------------------------------


@FUZZ
@given(text_inputs([CHECKPOINT_TEXT]))
def test_checkpoint_parse(text: str) -> None:
    only((c2sp_text.MalformedError,), lcp.Checkpoint.parse, text)


@FUZZ
@given(text_inputs([NOTE]))
def test_note_open_and_verify_checkpoint(text: str) -> None:
    only((VerificationError,), lambda t: signed_note.open_note(t, VKEY), text)
    only((VerificationError,), lambda t: lcp.verify_checkpoint(t, VKEY), text)


@FUZZ
@given(text_inputs([VKEY]))
def test_parse_vkey(text: str) -> None:
    only((c2sp_text.MalformedError,), signed_note.parse_vkey, text)


@FUZZ
@given(text_inputs([TLOG_PROOF]))
def test_tlog_proof(text: str) -> None:
    only((c2sp_text.MalformedError,), tlog_proof.parse_tlog_proof, text)
    leaf = lf.decode_log_entry(ENTRIES[3]).leaf_hash
    only((VerificationError,), lambda t: tlog_proof.verify_tlog_proof(t, leaf, VKEY), text)


# -- the auditor's own decoders ------------------------------------------------------------------


@FUZZ
@given(inputs(ENTRIES))
def test_audit_decode_entry(data: bytes) -> None:
    only((DecodeError,), audit_formats.decode_entry, data)


@FUZZ
@given(inputs(BODIES))
def test_audit_decode_body(data: bytes) -> None:
    only((DecodeError,), audit_formats.decode_body, data)


@FUZZ
@given(inputs(SIGNED_EVENTS))
def test_audit_decode_signed_event(data: bytes) -> None:
    only((DecodeError,), audit_formats.decode_signed_event, data)


@FUZZ
@given(text_inputs([NOTE]))
def test_audit_notes(text: str) -> None:
    verifier = audit_note.parse_vkey(VKEY)
    only((audit_note.NoteError,), audit_note.parse_note, text)
    only((audit_note.NoteError,), lambda t: audit_note.open_checkpoint(t, [verifier]), text)


@FUZZ
@given(text_inputs([CHECKPOINT_TEXT, VKEY]))
def test_audit_checkpoint_and_vkey(text: str) -> None:
    only((audit_note.NoteError,), audit_note.parse_checkpoint, text)
    only((audit_note.NoteError,), audit_note.parse_vkey, text)


# -- the auditor's export reader (audit.container through audit.sources.ExportSource) -------------


def _exports() -> list[bytes]:
    """Export files of the vector entries, deflated (as `steward export` writes them) and not."""
    import io

    import fastavro

    schema = fastavro.parse_schema(
        json.loads(
            (Path(audit_formats.__file__).parent / "schemas" / "export_record.v1.avsc").read_text()
        )
    )
    metadata = {
        "steward.format": "steward-export/v1",
        "steward.checkpoints": json.dumps([{"size": len(ENTRIES), "note": NOTE}]),
    }
    out = []
    for codec in ("deflate", "null"):
        buf = io.BytesIO()
        rows = [{"seq": i, "entry": raw} for i, raw in enumerate(ENTRIES)]
        fastavro.writer(buf, schema, rows, metadata=metadata, codec=codec, sync_interval=2048)
        out.append(buf.getvalue())
    return out


EXPORTS = _exports()


def _read_export(data: bytes) -> None:
    import tempfile

    from audit.sources import ExportSource

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.avro"
        path.write_bytes(data)
        source = ExportSource(path)
        try:
            source.checkpoints()
            for _ in source.records():
                pass
        finally:
            source.close()


@FUZZ
@given(
    st.one_of(
        mutated(EXPORTS),
        st.binary(max_size=512),
        st.binary(max_size=512).map(lambda b: b"Obj\x01" + b),
    )
)
def test_audit_export_reader(data: bytes) -> None:
    """Whatever the file holds, reading it raises nothing but the auditor's own AuditError (exit
    status 2, one line), and an error message is one line."""
    from audit.errors import AuditError

    try:
        _read_export(data)
    except AuditError as exc:
        assert "\n" not in str(exc), str(exc)


def test_export_seeds_are_valid() -> None:
    for data in EXPORTS:
        _read_export(data)


# -- the two decoders agree on what is valid -----------------------------------------------------


@FUZZ
@given(inputs(ENTRIES))
def test_ledger_and_auditor_agree_on_entries(data: bytes) -> None:
    """An entry one side decodes and the other refuses would be a split-brain bug; so would an
    entry both decode to different values (one reader masking what the other reads whole)."""
    import dataclasses

    try:
        ledger_entry = lf.decode_log_entry(data)
    except FormatError:
        ledger_entry = None
    try:
        audit_entry = audit_formats.decode_entry(data)
        audit_body = audit_formats.decode_body(audit_entry.body)
    except DecodeError:
        audit_entry = audit_body = None
    ledger_ok, audit_ok = ledger_entry is not None, audit_entry is not None
    assert ledger_ok == audit_ok, f"ledger {'accepts' if ledger_ok else 'refuses'} {data.hex()}"
    if ledger_entry is None or audit_entry is None:
        return
    assert _bits(dataclasses.asdict(ledger_entry.entry)) == _bits(
        dataclasses.asdict(audit_entry)
    ), data.hex()
    audit_fields = dataclasses.asdict(audit_body)
    # The auditor's body also keeps the type as written; the ledger checks it names the payload.
    assert audit_fields.pop("type") == type(ledger_entry.body.payload).__name__, data.hex()
    assert _bits(dataclasses.asdict(ledger_entry.body)) == _bits(audit_fields), data.hex()


def _bits(value: Any) -> Any:
    """`value` with every float as its 8 bytes: NaN equals itself, -0.0 differs from 0.0."""
    import struct

    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, dict):
        return {k: _bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bits(v) for v in value]
    return value


@pytest.mark.parametrize("seed", range(len(ENTRIES)))
def test_seeds_are_valid(seed: int) -> None:
    lf.decode_log_entry(ENTRIES[seed])
    audit_formats.decode_entry(ENTRIES[seed])


# -- the signature worker's pipe protocol (ledger.sigworker) ----------------------------------


def _worker_requests() -> list[bytes]:
    from ledger.sigworker import encode_request

    key = PrivateKey.from_seed(bytes(range(32)))
    items = [(key.public.raw, key.ed25519.sign(m), m) for m in (b"", b"m", bytes(300))]
    return [encode_request(items)[4:], encode_request(items[:1])[4:]]


@FUZZ
@given(inputs(_worker_requests()))
def test_sigworker_decode_items(data: bytes) -> None:
    """A damaged request is a ValueError (the worker then exits with status 2), never a
    verdict for bytes that are not an item; whatever does decode re-encodes to itself."""
    from ledger.ed25519 import verify_many
    from ledger.sigworker import decode_items, encode_request

    try:
        items = decode_items(data)
    except ValueError:
        return
    assert encode_request(items)[4:] == data
    assert len(verify_many(items)) == len(items)
