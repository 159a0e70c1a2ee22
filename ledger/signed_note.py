"""C2SP signed notes (Ed25519) and their verifier keys (vkeys).

- **signed note** (https://c2sp.org/signed-note): the text (ending in a newline), a blank line,
  then one or more signature lines ``— <key name> base64(key ID || signature)`` (em dash
  U+2014, space). The signed message is the text including its final newline. For Ed25519
  (signature type 0x01) ``key ID = SHA-256(key name || 0x0A || 0x01 || public key)[:4]``.

- **verifier key** (vkey, as golang.org/x/mod/sumdb/note): ``<name>+<key ID, 8 hex>+base64(0x01
  || 32-byte Ed25519 public key)``.

Strictness (on top of the text rules of ledger/c2sp_text.py): notes must have the blank line and
at least one signature line, every signature line must be well formed (valid key name, canonical
base64, at least 4 + 1 bytes), at most :data:`MAX_SIGNATURES` lines; signatures from unknown keys
(name and key ID not both matching a known verifier) are ignored, as the spec requires; a
signature from a known key that does not verify rejects the whole note; a note without a
verified signature from a known key is rejected (:class:`~ledger.errors.VerificationError`).

The signing side is :class:`ledger.checkpoint.Signer`, the ledger's checkpoint key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.c2sp_text import (
    MalformedError,
    b64,
    b64decode_canonical,
    check_name,
    check_utf8_text,
    is_valid_name,
)
from ledger.ed25519 import verify_ed25519
from ledger.errors import VerificationError

ALG_ED25519 = 0x01
"""Signed-note signature type byte for Ed25519."""

MAX_SIGNATURES = 100
"""Most signature lines a note may carry (the spec requires accepting at least 16)."""

SIG_PREFIX = "\u2014 "  # em dash, space
_ED25519_SIG_SIZE = 64
_ED25519_KEY_SIZE = 32
_HEX8 = re.compile(r"[0-9a-fA-F]{8}\Z")


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    """The 4-byte key ID: SHA-256(name || 0x0A || alg || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public_key).digest()[:4]


# --------------------------------------------------------------------------------------------
# Keys: verifiers, signers, vkeys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verifier:
    """A known note key: its name and raw 32-byte Ed25519 public key."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != _ED25519_KEY_SIZE:
            raise MalformedError(
                f"Ed25519 public key must be {_ED25519_KEY_SIZE} bytes", field="public_key"
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError as e:
            raise MalformedError(f"not an Ed25519 public key: {e}", field="public_key") from None

    @classmethod
    def from_public_key(cls, name: str, key: Ed25519PublicKey) -> Verifier:
        return cls(name, key.public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        return make_vkey(self.name, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` (64 bytes, without key ID) is this key's over ``message``."""
        if len(signature) != _ED25519_SIG_SIZE:
            return False
        return verify_ed25519(self.public_key, signature, message)


def make_vkey(name: str, public_key: bytes) -> str:
    """``name+<key ID hex>+base64(0x01 || public key)`` for a raw 32-byte Ed25519 key."""
    check_name(name)
    if not isinstance(public_key, bytes) or len(public_key) != _ED25519_KEY_SIZE:
        raise MalformedError(
            f"Ed25519 public key must be {_ED25519_KEY_SIZE} bytes", field="public_key"
        )
    return f"{name}+{key_id(name, public_key).hex()}+{b64(bytes([ALG_ED25519]) + public_key)}"


def parse_vkey(vkey: str) -> Verifier:
    """Parse a vkey string; the embedded key ID must match the name and key."""
    if not isinstance(vkey, str):
        raise MalformedError(f"vkey must be str, got {type(vkey).__name__}", field="vkey")
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise MalformedError(
            f"vkey {vkey!r}: expected <name>+<8 hex key ID>+<base64 key>", field="vkey"
        )
    name, hex_id, key64 = parts
    check_name(name)
    if not _HEX8.match(hex_id):
        raise MalformedError(f"vkey key ID {hex_id!r}: expected 8 hex digits", field="vkey")
    key = b64decode_canonical(key64, "vkey key")
    if not key:
        raise MalformedError("vkey key is empty", field="vkey")
    if key[0] != ALG_ED25519:
        raise MalformedError(
            f"vkey signature type 0x{key[0]:02x} is not supported: expected 0x01 (Ed25519)",
            field="vkey",
        )
    if len(key) != 1 + _ED25519_KEY_SIZE:
        raise MalformedError(
            f"vkey Ed25519 key is {len(key) - 1} bytes, expected {_ED25519_KEY_SIZE}",
            field="vkey",
        )
    want = key_id(name, key[1:])
    if bytes.fromhex(hex_id) != want:
        raise MalformedError(
            f"vkey key ID {hex_id} does not match the name and key, which hash to {want.hex()}",
            field="vkey",
        )
    return Verifier(name, key[1:])


def _as_verifiers(verifiers: Verifier | str | Iterable[Verifier | str]) -> list[Verifier]:
    items: Iterable[Verifier | str]
    items = [verifiers] if isinstance(verifiers, Verifier | str) else verifiers
    return [v if isinstance(v, Verifier) else parse_vkey(v) for v in items]


@dataclass(frozen=True)
class _SigLine:
    name: str
    key_id: bytes
    signature: bytes
    line: str


def split_note(note: str) -> tuple[str, list[_SigLine]]:
    """Structural parse of a signed note: (text, signature lines). No signature checks."""
    check_utf8_text(note, "note")
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedError(
            "note has no blank line separating the text from the signatures", field="note"
        )
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise MalformedError("note has no signature lines after the blank line", field="note")
    if not block.endswith("\n"):
        raise MalformedError("note does not end with a newline", field="note")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(
            f"note has {len(lines)} signature lines, at most {MAX_SIGNATURES} are accepted",
            field="note",
        )
    sigs: list[_SigLine] = []
    first = text.count("\n") + 2  # 1-based line number of the first signature line
    for n, line in enumerate(lines, start=first):
        if not line.startswith(SIG_PREFIX):
            raise MalformedError(
                f"note line {n}: {line!r} is not a signature line '\u2014 <name> <base64>'",
                field="note",
            )
        name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or not b64:
            raise MalformedError(
                f"note line {n}: expected '\u2014 <name> <base64>', got {line!r}", field="note"
            )
        if not is_valid_name(name):
            raise MalformedError(f"note line {n}: invalid key name {name!r}", field="note")
        raw = b64decode_canonical(b64, f"note line {n} signature")
        if len(raw) < 5:
            raise MalformedError(
                f"note line {n}: signature is {len(raw)} bytes, expected a 4-byte key ID and "
                "a signature",
                field="note",
            )
        sigs.append(_SigLine(name, raw[:4], raw[4:], line))
    return text, sigs


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign ``text`` (which must end with a newline) as a C2SP signed note."""
    check_utf8_text(text, "note text")
    if not text.endswith("\n"):
        raise MalformedError("note text must end with a newline", field="text")
    check_name(name)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError(f"expected an Ed25519PrivateKey, got {type(private_key).__name__}")
    pub = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = private_key.sign(text.encode("utf-8"))
    return f"{text}\n{SIG_PREFIX}{name} {b64(key_id(name, pub) + sig)}\n"


@dataclass(frozen=True)
class OpenedNote:
    """A verified note: its text, the names of the known keys whose signatures verified, and
    the signature lines from unknown keys (ignored, kept for the record)."""

    text: str
    signers: tuple[str, ...]
    unverified: tuple[str, ...] = ()


def open_note_full(note: str, verifiers: Verifier | str | Iterable[Verifier | str]) -> OpenedNote:
    """Like :func:`open_note`, also returning the ignored signature lines."""
    known = _as_verifiers(verifiers)
    text, sigs = split_note(note)
    by_id = {(v.name, v.key_id): v for v in known}
    message = text.encode("utf-8")
    verified: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    unknown: list[str] = []
    for s in sigs:
        v = by_id.get((s.name, s.key_id))
        if v is None:
            if s.line not in unknown:
                unknown.append(s.line)
            continue
        if (s.name, s.key_id) in seen:
            continue  # a repeated signature by the same key counts once
        seen.add((s.name, s.key_id))
        if not v.verify(message, s.signature):
            raise VerificationError(
                f"note signature by known key {s.name} ({s.key_id.hex()}) does not verify"
            )
        verified.append(s.name)
    if not verified:
        present = ", ".join(f"{s.name} ({s.key_id.hex()})" for s in sigs)
        expected = ", ".join(f"{v.name} ({v.key_id.hex()})" for v in known) or "none"
        raise VerificationError(
            f"note has no signature from a known key: signed by {present}; known keys: {expected}"
        )
    return OpenedNote(text, tuple(verified), tuple(unknown))


def open_note(
    note: str, verifiers: Verifier | str | Iterable[Verifier | str]
) -> tuple[str, list[str]]:
    """Verify a signed note against known keys; return (text, names of verified signers).

    ``verifiers`` is one or more :class:`Verifier` objects or vkey strings. Signatures from
    unknown keys are ignored; raises :class:`VerificationError` when a known key's signature
    fails or none verifies, and :class:`MalformedError` when the note is malformed.
    """
    opened = open_note_full(note, verifiers)
    return opened.text, list(opened.signers)
