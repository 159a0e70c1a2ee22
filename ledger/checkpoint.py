"""C2SP checkpoints, signed notes (Ed25519), verifier keys and tlog-proof bundles.

Formats (all text is UTF-8; base64 is RFC 4648 §4 standard, with padding):

- **tlog-checkpoint** (https://c2sp.org/tlog-checkpoint)::

      <origin>\\n<tree size, decimal, no leading zeros>\\n<base64 of the 32-byte root>\\n
      [<extension line>\\n ...]

- **signed note** (https://c2sp.org/signed-note): the text (ending in a newline), a blank line,
  then one or more signature lines ``— <key name> base64(key ID || signature)`` (em dash
  U+2014, space). The signed message is the text including its final newline. For Ed25519
  (signature type 0x01) ``key ID = SHA-256(key name || 0x0A || 0x01 || public key)[:4]``.

- **verifier key** (vkey, as golang.org/x/mod/sumdb/note): ``<name>+<key ID, 8 hex>+base64(0x01
  || 32-byte Ed25519 public key)``.

- **tlog-proof@v1** (https://c2sp.org/tlog-proof), see :class:`TlogProof`.

Strictness (a parse either yields exactly what was written or fails):

- notes must be valid UTF-8 without ASCII control characters other than newline, must have the
  blank line and at least one signature line, every signature line must be well formed (valid
  key name, canonical base64, at least 4 + 1 bytes), at most :data:`MAX_SIGNATURES` lines;
- signatures from unknown keys (name and key ID not both matching a known verifier) are
  ignored, as the spec requires; a signature from a known key that does not verify rejects the
  whole note; a note without a verified signature from a known key is rejected;
- base64 must be canonical (re-encoding gives the same text), so one value has one spelling;
- checkpoint sizes are ASCII decimals without leading zeros below 2**64, roots exactly 32 bytes,
  extension lines non-empty.

Every parse failure raises :class:`MalformedError`, which is both a
:class:`~ledger.errors.FormatError` and a :class:`~ledger.errors.VerificationError`; failed
signatures, proofs or origins raise :class:`~ledger.errors.VerificationError`. Messages name the
line and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.ed25519 import verify_ed25519
from ledger.errors import FormatError, VerificationError
from ledger.merkle import HASH_SIZE, root_from_inclusion_proof

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "TLOG_PROOF_HEADER",
    "Checkpoint",
    "MalformedError",
    "OpenedNote",
    "Signer",
    "TlogProof",
    "Verifier",
    "key_id",
    "make_vkey",
    "open_note",
    "open_note_full",
    "parse_tlog_proof",
    "parse_vkey",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
    "verify_tlog_proof",
    "write_tlog_proof",
]

ALG_ED25519 = 0x01
"""Signed-note signature type byte for Ed25519."""

MAX_SIGNATURES = 100
"""Most signature lines a note may carry (the spec requires accepting at least 16)."""

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"

SIG_PREFIX = "\u2014 "  # em dash, space
_ED25519_SIG_SIZE = 64
_ED25519_KEY_SIZE = 32
_MAX_UINT64 = 2**64 - 1
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}\Z")


class MalformedError(FormatError, VerificationError):
    """Text that does not parse as a note, vkey, checkpoint or tlog-proof.

    Both a :class:`FormatError` and a :class:`VerificationError`: a verifier that catches
    ``VerificationError`` rejects malformed input as well.
    """


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _b64decode(text: str, what: str) -> bytes:
    """Canonical standard base64: the only accepted spelling is what b64encode produces."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise MalformedError(f"{what}: {text!r} is not valid base64", field=what) from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedError(f"{what}: {text!r} is not canonical base64", field=what)
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 and c != "\n" for c in text)


def _check_utf8_text(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise MalformedError(f"{what} must be str, got {type(text).__name__}", field=what)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError(f"{what} is not valid UTF-8", field=what) from None
    for i, c in enumerate(text):
        if ord(c) < 0x20 and c != "\n":
            raise MalformedError(
                f"{what} contains control character U+{ord(c):04X} at offset {i}; "
                "only newline is allowed",
                field=what,
            )


def _is_valid_name(name: str) -> bool:
    """Key names: non-empty, no Unicode spaces, no '+', no control characters."""
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() for c in name)
        and not _has_control(name)
    )


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _is_valid_name(name):
        raise MalformedError(
            f"key name {name!r} is invalid: expected non-empty text without spaces or '+'",
            field="name",
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError(f"key name {name!r} is not valid UTF-8", field="name") from None
    return name


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
        _check_name(self.name)
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


class Signer:
    """The ledger's note signer: a key name and an Ed25519 private key."""

    __slots__ = ("_private", "name", "public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519PrivateKey, got {type(private_key).__name__}")
        self.name = _check_name(name)
        self._private = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        return make_vkey(self.name, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature of ``message``."""
        return self._private.sign(message)

    def sign_note(self, text: str) -> str:
        return sign_note(text, self.name, self._private)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id.hex()})"


def make_vkey(name: str, public_key: bytes) -> str:
    """``name+<key ID hex>+base64(0x01 || public key)`` for a raw 32-byte Ed25519 key."""
    _check_name(name)
    if not isinstance(public_key, bytes) or len(public_key) != _ED25519_KEY_SIZE:
        raise MalformedError(
            f"Ed25519 public key must be {_ED25519_KEY_SIZE} bytes", field="public_key"
        )
    return f"{name}+{key_id(name, public_key).hex()}+{_b64(bytes([ALG_ED25519]) + public_key)}"


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
    _check_name(name)
    if not _HEX8.match(hex_id):
        raise MalformedError(f"vkey key ID {hex_id!r}: expected 8 hex digits", field="vkey")
    key = _b64decode(key64, "vkey key")
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


# --------------------------------------------------------------------------------------------
# Signed notes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SigLine:
    name: str
    key_id: bytes
    signature: bytes
    line: str


def _split_note(note: str) -> tuple[str, list[_SigLine]]:
    """Structural parse of a signed note: (text, signature lines). No signature checks."""
    _check_utf8_text(note, "note")
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
        if not _is_valid_name(name):
            raise MalformedError(f"note line {n}: invalid key name {name!r}", field="note")
        raw = _b64decode(b64, f"note line {n} signature")
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
    _check_utf8_text(text, "note text")
    if not text.endswith("\n"):
        raise MalformedError("note text must end with a newline", field="text")
    _check_name(name)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError(f"expected an Ed25519PrivateKey, got {type(private_key).__name__}")
    pub = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = private_key.sign(text.encode("utf-8"))
    return f"{text}\n{SIG_PREFIX}{name} {_b64(key_id(name, pub) + sig)}\n"


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
    text, sigs = _split_note(note)
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


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint body: origin, tree size, root hash and extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin:
            raise MalformedError(
                f"checkpoint origin {self.origin!r}: expected non-empty text on one line",
                field="origin",
            )
        _check_utf8_text(self.origin, "checkpoint origin")
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size <= _MAX_UINT64
        ):
            raise MalformedError(
                f"checkpoint size {self.size!r}: expected an integer in [0, 2**64)", field="size"
            )
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise MalformedError(
                f"checkpoint root must be {HASH_SIZE} bytes, got {self.root!r}", field="root"
            )
        if not isinstance(self.extensions, tuple):
            raise MalformedError("checkpoint extensions must be a tuple", field="extensions")
        for ext in self.extensions:
            if not isinstance(ext, str) or not ext or "\n" in ext:
                raise MalformedError(
                    f"checkpoint extension line {ext!r}: expected non-empty text on one line",
                    field="extensions",
                )
            _check_utf8_text(ext, "checkpoint extension line")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Strictly parse a checkpoint body (the note text, ending with a newline)."""
        _check_utf8_text(text, "checkpoint")
        if not text.endswith("\n"):
            last = text.rsplit("\n", 1)[-1]
            raise MalformedError(
                f"checkpoint does not end with a newline (last line {last!r})", field="checkpoint"
            )
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedError(
                f"checkpoint has {len(lines)} lines, expected origin, size and root hash",
                field="checkpoint",
            )
        origin, size_s, root_s, *exts = lines
        if not origin:
            raise MalformedError("checkpoint line 1 (origin) is empty", field="origin")
        if not _DECIMAL.match(size_s):
            raise MalformedError(
                f"checkpoint line 2 (tree size): {size_s!r} is not an ASCII decimal without "
                "leading zeros",
                field="size",
            )
        size = int(size_s)
        if size > _MAX_UINT64:
            raise MalformedError(
                f"checkpoint line 2 (tree size): {size_s} does not fit in 64 bits", field="size"
            )
        root = _b64decode(root_s, "checkpoint line 3 (root hash)")
        if len(root) != HASH_SIZE:
            raise MalformedError(
                f"checkpoint line 3 (root hash) is {len(root)} bytes, expected {HASH_SIZE}",
                field="root",
            )
        for n, ext in enumerate(exts, start=4):
            if not ext:
                raise MalformedError(
                    f"checkpoint line {n} (extension) is empty; extension lines must be non-empty",
                    field="extensions",
                )
        return cls(origin, size, root, tuple(exts))


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> str:
    """The checkpoint as a signed note (the key name should match the origin)."""
    return signer.sign_note(cp.to_text())


def verify_checkpoint(
    note: str,
    vkey_or_verifier: Verifier | str | Iterable[Verifier | str],
    expected_origin: str | None = None,
) -> Checkpoint:
    """Verify a signed checkpoint note and return the checkpoint it carries."""
    text, _ = open_note(note, vkey_or_verifier)
    cp = Checkpoint.parse(text)
    if expected_origin is not None and cp.origin != expected_origin:
        raise VerificationError(f"checkpoint origin is {cp.origin!r}, expected {expected_origin!r}")
    return cp


# --------------------------------------------------------------------------------------------
# tlog-proof@v1
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlogProof:
    """A C2SP ``tlog-proof@v1`` bundle (https://c2sp.org/tlog-proof)::

        c2sp.org/tlog-proof@v1
        [extra <base64 opaque data>]       optional, unauthenticated
        index <N>                          decimal, no leading zeros
        <base64 hash>                      zero or more: the RFC 6962 inclusion proof,
        ...                                leaf's sibling first, up to the root's child
        <empty line>
        <signed checkpoint note, verbatim>

    Matches transparency-dev/formats ``proof.TLogProof`` (Marshal output is identical).
    """

    index: int
    proof: tuple[bytes, ...]
    checkpoint_note: str
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            raise MalformedError(f"tlog-proof index {self.index!r}: expected an integer >= 0")
        for i, h in enumerate(self.proof):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise MalformedError(f"tlog-proof hash {i} must be {HASH_SIZE} bytes")
        _split_note(self.checkpoint_note)

    def to_text(self) -> str:
        out = [TLOG_PROOF_HEADER + "\n"]
        if self.extra is not None:
            out.append(f"extra {_b64(self.extra)}\n")
        out.append(f"index {self.index}\n")
        out.extend(_b64(h) + "\n" for h in self.proof)
        out.append("\n")
        out.append(self.checkpoint_note)
        return "".join(out)

    @classmethod
    def parse(cls, bundle: str) -> TlogProof:
        if not isinstance(bundle, str):
            raise MalformedError(f"tlog-proof must be str, got {type(bundle).__name__}")
        lines = bundle.split("\n")
        if lines[0] != TLOG_PROOF_HEADER:
            raise MalformedError(
                f"tlog-proof line 1: {lines[0][:60]!r}, expected {TLOG_PROOF_HEADER!r}"
            )
        n = 1
        extra: bytes | None = None
        if n < len(lines) and lines[n].startswith("extra "):
            extra = _b64decode(lines[n][len("extra ") :], "tlog-proof line 2 (extra)")
            n += 1
        if n >= len(lines) or not lines[n].startswith("index "):
            got = lines[n] if n < len(lines) else "end of text"
            raise MalformedError(f"tlog-proof line {n + 1}: {got!r}, expected 'index <N>'")
        index_s = lines[n][len("index ") :]
        if not _DECIMAL.match(index_s) or int(index_s) > _MAX_UINT64:
            raise MalformedError(
                f"tlog-proof line {n + 1}: index {index_s!r} is not a 64-bit decimal without "
                "leading zeros"
            )
        index = int(index_s)
        n += 1
        hashes: list[bytes] = []
        while n < len(lines) and lines[n] != "":
            h = _b64decode(lines[n], f"tlog-proof line {n + 1} (proof hash)")
            if len(h) != HASH_SIZE:
                raise MalformedError(
                    f"tlog-proof line {n + 1}: proof hash is {len(h)} bytes, expected {HASH_SIZE}"
                )
            hashes.append(h)
            n += 1
        if n >= len(lines):
            raise MalformedError(
                "tlog-proof has no empty line between the proof and the checkpoint"
            )
        note = "\n".join(lines[n + 1 :])
        if not note:
            raise MalformedError("tlog-proof has no checkpoint after the empty line")
        return cls(index, tuple(hashes), note, extra)


def write_tlog_proof(
    index: int, proof: Sequence[bytes], checkpoint_note: str, extra: bytes | None = None
) -> str:
    """A ``c2sp.org/tlog-proof@v1`` bundle (format in :class:`TlogProof`)."""
    return TlogProof(index, tuple(proof), checkpoint_note, extra).to_text()


def parse_tlog_proof(bundle: str) -> TlogProof:
    return TlogProof.parse(bundle)


def verify_tlog_proof(
    bundle: str,
    leaf_hash: bytes,
    vkey: Verifier | str | Iterable[Verifier | str],
    expected_origin: str | None = None,
) -> Checkpoint:
    """Verify a tlog-proof bundle for ``leaf_hash``; return the checkpoint it is proved in.

    Checks the checkpoint note's signature against ``vkey``, then the inclusion proof of
    ``leaf_hash`` at the bundle's index against the checkpoint's root. The extra data is not
    authenticated and not checked. Raises :class:`VerificationError` saying what failed.
    """
    p = TlogProof.parse(bundle)
    try:
        cp = verify_checkpoint(p.checkpoint_note, vkey, expected_origin)
    except MalformedError as e:
        raise MalformedError(f"tlog-proof checkpoint: {e}", field=e.field) from e
    except VerificationError as e:
        raise VerificationError(f"tlog-proof checkpoint: {e}") from e
    if p.index >= cp.size:
        raise VerificationError(
            f"tlog-proof index {p.index} is not in the checkpoint's tree of size {cp.size}"
        )
    try:
        root = root_from_inclusion_proof(leaf_hash, p.index, cp.size, p.proof)
    except VerificationError as e:
        raise VerificationError(f"tlog-proof inclusion proof: {e}") from e
    if root != cp.root:
        raise VerificationError(
            f"tlog-proof inclusion proof of leaf {bytes(leaf_hash).hex()} at index {p.index} "
            f"leads to root {_b64(root)}, but the checkpoint of size {cp.size} has root "
            f"{_b64(cp.root)}"
        )
    return cp
