"""audit.note against the C2SP signed-note example and self-made checkpoints."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.note import (
    NoteError,
    note_key_id,
    open_checkpoint,
    open_note,
    parse_vkey,
    vkey_of,
)

C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = (
    "This is an example message.\n"
    "\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def test_c2sp_example_verifies() -> None:
    v = parse_vkey(C2SP_VKEY)
    assert v.name == "example.com/foo" and v.key_id.hex() == "530d903a"
    assert v.vkey == C2SP_VKEY
    note = open_note(C2SP_NOTE, [v])
    assert note.text == "This is an example message.\n"


def test_c2sp_example_tampered_text_fails() -> None:
    v = parse_vkey(C2SP_VKEY)
    with pytest.raises(NoteError):
        open_note(C2SP_NOTE.replace("example message", "exemple message"), [v])


def test_unknown_signer_is_not_trusted() -> None:
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with pytest.raises(NoteError, match="no signature by a trusted key"):
        open_note(C2SP_NOTE, [parse_vkey(vkey_of("example.com/bar", other))])


def test_bad_vkeys_are_refused() -> None:
    for bad in ("", "a+b", C2SP_VKEY.replace("530d903a", "530d903b"), C2SP_VKEY[:-4]):
        with pytest.raises(NoteError):
            parse_vkey(bad)


def _sign(text: str, name: str, key: Ed25519PrivateKey) -> str:
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = base64.b64encode(note_key_id(name, pub) + key.sign(text.encode())).decode()
    return f"{text}\n\u2014 {name} {sig}\n"


def test_checkpoint_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    root = hashlib.sha256(b"x").digest()
    text = f"steward.dev/ledger/t\n42\n{base64.b64encode(root).decode()}\n"
    cp = open_checkpoint(
        _sign(text, "steward.dev/ledger/t", key), [parse_vkey(vkey_of("steward.dev/ledger/t", pub))]
    )
    assert (cp.origin, cp.size, cp.root) == ("steward.dev/ledger/t", 42, root)
    with pytest.raises(NoteError):
        open_checkpoint(
            _sign(text.replace("\n42\n", "\n042\n"), "steward.dev/ledger/t", key),
            [parse_vkey(vkey_of("steward.dev/ledger/t", pub))],
        )
