"""C2SP tlog-cosignature v1 (https://c2sp.org/tlog-cosignature): a witness's timestamped
Ed25519 signature on a checkpoint, and checkpoint notes that carry them.

A cosignature is a signed-note signature line ``— <witness name> base64(key ID || timestamp ||
signature)`` where

- ``key ID = SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4]`` (type 0x04, not
  the 0x01 of a plain note signature: a witness key never signs a plain note);
- ``timestamp`` is 8 bytes, big-endian, POSIX seconds, at most 2**63 - 1;
- ``signature`` is Ed25519 over ``"cosignature/v1\\ntime <timestamp>\\n" || checkpoint body``
  (the note text, with its final newline, without any signature line).

A witness is named to the ledger and to the auditor by its vkey,
``<name>+<key ID, 8 hex>+base64(0x04 || public key)``, as litewitness prints it.

:func:`verify_cosignatures` keeps, out of some signature lines, those that are valid
cosignatures by known witnesses on a checkpoint; :func:`cosigned_note` appends them to the
ledger's signed note (the note's own bytes are unchanged, so every note verifier that ignores
unknown keys, as the signed-note spec requires, still reads it).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.c2sp_text import MalformedError, b64, b64decode_canonical, check_name, is_valid_name
from ledger.ed25519 import verify_ed25519
from ledger.errors import VerificationError
from ledger.signed_note import SIG_PREFIX, split_note

ALG_COSIGNATURE_V1 = 0x04
"""The key ID algorithm byte of an Ed25519 cosignature v1 key (tlog-cosignature)."""

MAX_TIMESTAMP = 2**63 - 1
_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64
_COSIG_SIZE = 4 + 8 + _ED25519_SIG_SIZE


def cosigner_key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x04 || public key)[:4]."""
    return hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public_key
    ).digest()[:4]


def cosignature_message(timestamp: int, checkpoint_text: str) -> bytes:
    """What the witness signs: the v1 header, the time line, then the checkpoint body."""
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode()


@dataclass(frozen=True)
class WitnessKey:
    """A witness (cosigner) as its vkey names it: its name and raw Ed25519 public key."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != _ED25519_KEY_SIZE:
            raise MalformedError(
                f"a witness's Ed25519 public key is {_ED25519_KEY_SIZE} bytes", field="vkey"
            )

    @property
    def key_id(self) -> bytes:
        return cosigner_key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_COSIGNATURE_V1]) + self.public_key
        return f"{self.name}+{self.key_id.hex()}+{b64(raw)}"

    @classmethod
    def parse(cls, vkey: str) -> WitnessKey:
        """Parse a cosigner vkey (type 0x04); its key ID must match the name and key."""
        if not isinstance(vkey, str):
            raise MalformedError("a witness vkey is text", field="vkey")
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or len(parts[1]) != 8:
            raise MalformedError(
                f"witness vkey {vkey!r}: expected <name>+<8 hex key ID>+<base64 key>",
                field="vkey",
            )
        name, hex_id, key64 = parts
        check_name(name)
        raw = b64decode_canonical(key64, "witness vkey key")
        if len(raw) != 1 + _ED25519_KEY_SIZE or raw[0] != ALG_COSIGNATURE_V1:
            raise MalformedError(
                f"witness vkey {vkey!r}: expected type 0x04 (Ed25519 cosignature v1) and a "
                "32-byte key",
                field="vkey",
            )
        key = cls(name, raw[1:])
        try:
            claimed = bytes.fromhex(hex_id)
        except ValueError:
            raise MalformedError(
                f"witness vkey key ID {hex_id!r} is not hex", field="vkey"
            ) from None
        if claimed != key.key_id:
            raise MalformedError(
                f"witness vkey {vkey!r}: key ID {hex_id} does not match the name and key "
                f"({key.key_id.hex()})",
                field="vkey",
            )
        return key


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: whose, when (POSIX seconds), and its signature line."""

    witness: str
    timestamp: int
    line: str


def verify_cosignature_line(
    line: str, checkpoint_text: str, witness: WitnessKey
) -> Cosignature | None:
    """The cosignature ``line`` is, if it is ``witness``'s; None if it names another key.

    Raises VerificationError when it names the witness's key but does not verify (or is not
    a well-formed cosignature): a witness that answers so is misbehaving, or someone is lying.
    """
    body = line[len(SIG_PREFIX) :] if line.startswith(SIG_PREFIX) else None
    name, _, sig64 = (body or "").partition(" ")
    if body is None or not is_valid_name(name) or not sig64:
        raise MalformedError(f"not a signature line: {line!r}", field="cosignature")
    raw = b64decode_canonical(sig64, "cosignature")
    if name != witness.name or raw[:4] != witness.key_id:
        return None
    if len(raw) != _COSIG_SIZE:
        raise VerificationError(
            f"cosignature by {witness.name} is {len(raw)} bytes, expected {_COSIG_SIZE}"
        )
    (timestamp,) = struct.unpack(">Q", raw[4:12])
    if timestamp > MAX_TIMESTAMP:
        raise VerificationError(f"cosignature by {witness.name}: timestamp {timestamp} too large")
    message = cosignature_message(timestamp, checkpoint_text)
    if not verify_ed25519(witness.public_key, raw[12:], message):
        raise VerificationError(
            f"cosignature by {witness.name} ({witness.key_id.hex()}) does not verify"
        )
    return Cosignature(witness.name, timestamp, line)


def verify_cosignatures(
    lines: Iterable[str], checkpoint_text: str, witnesses: Sequence[WitnessKey]
) -> list[Cosignature]:
    """The valid cosignatures among ``lines`` by ``witnesses``, one per witness at most.

    Lines by other keys are ignored (the spec says clients must); a line that names a known
    witness but fails raises VerificationError.
    """
    found: dict[bytes, Cosignature] = {}
    for line in lines:
        for w in witnesses:
            cosig = verify_cosignature_line(line, checkpoint_text, w)
            if cosig is not None:
                found.setdefault(w.key_id, cosig)
    return list(found.values())


def cosignature_lines(response: str) -> list[str]:
    """The signature lines of a witness's add-checkpoint answer (each ends with a newline)."""
    if not response.endswith("\n"):
        raise MalformedError("a witness's answer ends with a newline", field="cosignature")
    lines = response[:-1].split("\n")
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise MalformedError(
                f"a witness answered {line!r}, not a signature line", field="cosignature"
            )
    return lines


def cosigned_note(note: str, cosignatures: Iterable[str]) -> str:
    """The ledger's signed ``note`` with the cosignature lines appended (those it lacks)."""
    _, sigs = split_note(note)
    present = {s.line for s in sigs}
    extra = [line for line in cosignatures if line not in present]
    return note + "".join(line + "\n" for line in dict.fromkeys(extra))


def cosign(checkpoint_text: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> str:
    """A cosignature line by ``name``'s key: what a witness returns (for tests and tools)."""
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = private_key.sign(cosignature_message(timestamp, checkpoint_text))
    raw = cosigner_key_id(name, public) + struct.pack(">Q", timestamp) + sig
    return f"{SIG_PREFIX}{name} {b64(raw)}"
