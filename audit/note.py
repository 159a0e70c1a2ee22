"""C2SP signed notes and tlog checkpoints (Ed25519 only), written from the C2SP specs.

A note is ``text ‖ "\\n" ‖ signature lines``; the text ends with a newline, each signature
line is ``"— " name " " base64(keyID(4) ‖ signature(64)) "\\n"``. For Ed25519,
keyID = SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)[:4] and a verifier key is written
``name+hex(keyID)+base64(0x01 ‖ public key)``. A checkpoint's text is its origin line, the
decimal tree size and the base64 root hash, then optional extension lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from audit.ed25519 import verify as verify_ed25519
from audit.errors import AuditorError

ED25519_ALG = 0x01
SIG_PREFIX = "\u2014 "  # em dash and a space
MAX_NOTE_BYTES = 1 << 20


class NoteError(AuditorError, ValueError):
    """A note, vkey or checkpoint that does not parse or does not verify."""


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: bytes  # 4 bytes
    public_key: bytes  # raw Ed25519, 32 bytes

    @property
    def vkey(self) -> str:
        return vkey_of(self.name, self.public_key)

    def verify(self, message: bytes, sig: bytes) -> bool:
        return verify_ed25519(self.public_key, sig, message)


def _valid_name(name: str) -> bool:
    if not name or "+" in name or any(c.isspace() for c in name):
        return False
    try:
        name.encode()  # a lone surrogate (JSON's "\ud800") has no UTF-8 form to hash
    except UnicodeEncodeError:
        return False
    return True


def note_key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_ALG]) + public_key).digest()[:4]


def vkey_of(name: str, public_key: bytes) -> str:
    kid = note_key_id(name, public_key)
    return f"{name}+{kid.hex()}+{base64.b64encode(bytes([ED25519_ALG]) + public_key).decode()}"


def parse_vkey(vkey: str) -> Verifier:
    parts = vkey.strip().split("+", 2)  # base64 may itself hold "+"
    if len(parts) != 3:
        raise NoteError(f"verifier key {vkey!r}: expected name+hexid+base64key")
    name, hex_id, b64 = parts
    if not _valid_name(name) or len(hex_id) != 8:
        raise NoteError(f"verifier key {vkey!r}: bad name or key id")
    try:
        kid = bytes.fromhex(hex_id)
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise NoteError(f"verifier key {vkey!r}: {exc}") from exc
    if len(raw) != 33 or raw[0] != ED25519_ALG:
        raise NoteError(f"verifier key {vkey!r}: only Ed25519 (algorithm 0x01) keys are supported")
    if note_key_id(name, raw[1:]) != kid:
        raise NoteError(f"verifier key {vkey!r}: key id does not match the name and key")
    return Verifier(name, kid, raw[1:])


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    sig: bytes


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[NoteSignature, ...]


def parse_note(note: str) -> Note:
    """Split a signed note into its text and signature lines (nothing is verified here)."""
    try:
        size = len(note.encode())
    except UnicodeEncodeError as exc:  # JSON's "\ud800" escape decodes to a lone surrogate
        raise NoteError(
            f"note is not UTF-8 text (a lone surrogate at character {exc.start})"
        ) from None
    if size > MAX_NOTE_BYTES:
        raise NoteError("note is too large")
    if not note.endswith("\n"):
        raise NoteError("a signed note ends with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("no blank line between the text and the signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    sigs: list[NoteSignature] = []
    for line in sig_block.split("\n")[:-1]:
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"signature line {line!r} does not start with '— '")
        try:
            name, b64 = line[len(SIG_PREFIX) :].split(" ")
            raw = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise NoteError(f"malformed signature line {line!r}") from exc
        if not _valid_name(name) or len(raw) < 5:
            raise NoteError(f"malformed signature line {line!r}")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    if not sigs:
        raise NoteError("the note carries no signature")
    return Note(text, tuple(sigs))


def open_note(note: str, verifiers: list[Verifier]) -> Note:
    """Parse `note` and check it carries a valid signature by one of `verifiers`.

    Signatures by unknown keys are ignored (C2SP: notes may be cosigned); a signature that
    claims a known key but does not verify is an error.
    """
    parsed = parse_note(note)
    message = parsed.text.encode()
    known = {(v.name, v.key_id): v for v in verifiers}
    ok = False
    for s in parsed.signatures:
        v = known.get((s.name, s.key_id))
        if v is None:
            continue
        if len(s.sig) != 64 or not v.verify(message, s.sig):
            raise NoteError(f"signature by {s.name}+{s.key_id.hex()} does not verify")
        ok = True
    if not ok:
        names = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in parsed.signatures)
        wanted = ", ".join(f"{v.name}+{v.key_id.hex()}" for v in verifiers)
        raise NoteError(f"no signature by a trusted key (signed by {names}; trusted: {wanted})")
    return parsed


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint's note text (not its signatures)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError(
            "checkpoint text needs origin, size and root lines, each ending in a newline"
        )
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not origin:
        raise NoteError("checkpoint origin is empty")
    # isascii: str.isdigit() is also true of "¹" and "٣", which int() refuses or reads
    if not (size_s.isascii() and size_s.isdigit()) or (len(size_s) > 1 and size_s[0] == "0"):
        raise NoteError(f"checkpoint size {size_s!r} is not a decimal number")
    if int(size_s) >= 2**64:
        raise NoteError(f"checkpoint size {size_s} does not fit in 64 bits")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise NoteError(f"checkpoint root {root_s!r} is not base64") from exc
    if len(root) != 32:
        raise NoteError(f"checkpoint root is {len(root)} bytes, expected 32")
    return Checkpoint(origin, int(size_s), root, tuple(lines[3:-1]))


def open_checkpoint(note: str, verifiers: list[Verifier]) -> Checkpoint:
    return parse_checkpoint(open_note(note, verifiers).text)
