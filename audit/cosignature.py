"""Witness cosignatures on checkpoints (C2SP tlog-cosignature v1, Ed25519), written from the
spec for the auditor, independent of the ledger's code.

A witness's vkey is ``name+hex(keyID)+base64(0x04 ‖ public key)`` with
keyID = SHA-256(name ‖ "\\n" ‖ 0x04 ‖ public key)[:4]. Its cosignature on a checkpoint is a
signature line of the checkpoint's note, ``— name base64(keyID ‖ timestamp ‖ signature)``: an
8-byte big-endian POSIX timestamp, then Ed25519 over
``"cosignature/v1\\ntime " timestamp "\\n" ‖ checkpoint text``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from audit.ed25519 import verify as verify_ed25519
from audit.note import Note, NoteError

COSIGNATURE_V1 = 0x04


@dataclass(frozen=True)
class Witness:
    """A witness the trust root names: its cosigner name and raw Ed25519 public key."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return witness_key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        raw = base64.b64encode(bytes([COSIGNATURE_V1]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{raw}"


def witness_key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_V1]) + public_key).digest()[:4]


def parse_witness_vkey(vkey: str) -> Witness:
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3 or len(parts[1]) != 8:
        raise NoteError(f"witness vkey {vkey!r}: expected name+hexid+base64key")
    name, hex_id, b64 = parts
    if not name or any(c.isspace() for c in name):
        raise NoteError(f"witness vkey {vkey!r}: bad name")
    try:
        kid = bytes.fromhex(hex_id)
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise NoteError(f"witness vkey {vkey!r}: {exc}") from exc
    if len(raw) != 33 or raw[0] != COSIGNATURE_V1:
        raise NoteError(
            f"witness vkey {vkey!r}: expected an Ed25519 cosignature v1 key (type 0x04)"
        )
    witness = Witness(name, raw[1:])
    if witness.key_id != kid:
        raise NoteError(f"witness vkey {vkey!r}: key id does not match the name and key")
    return witness


def cosigned_by(note: Note, witnesses: tuple[Witness, ...]) -> tuple[list[str], list[str]]:
    """(names of `witnesses` with a valid cosignature on `note`, names with an invalid one).

    Signature lines by other keys are ignored; a line that claims a named witness's key but
    does not verify counts as invalid (someone forged or damaged it).
    """
    valid: list[str] = []
    invalid: list[str] = []
    by_id = {(w.name, w.key_id): w for w in witnesses}
    text = note.text.encode()
    for s in note.signatures:
        w = by_id.get((s.name, s.key_id))
        if w is None or w.name in valid:
            continue
        ok = False
        if len(s.sig) == 8 + 64:
            (timestamp,) = struct.unpack(">Q", s.sig[:8])
            message = b"cosignature/v1\ntime %d\n" % timestamp + text
            ok = timestamp < 2**63 and verify_ed25519(w.public_key, s.sig[8:], message)
        if ok:
            valid.append(w.name)
            if w.name in invalid:
                invalid.remove(w.name)
        elif w.name not in invalid:
            invalid.append(w.name)
    return valid, invalid
