"""C2SP checkpoints (https://c2sp.org/tlog-checkpoint), and the ledger's key that signs them.

A checkpoint is the text::

    <origin>\n<tree size, decimal, no leading zeros>\n<base64 of the 32-byte root>\n
    [<extension line>\n ...]

published as a signed note (ledger/signed_note.py) by the ledger's checkpoint key,
:class:`Signer`. Sizes are ASCII decimals without leading zeros below 2**64, roots exactly 32
bytes, extension lines non-empty (the text rules of ledger/c2sp_text.py); every parse failure
raises :class:`~ledger.c2sp_text.MalformedError`, a wrong signature or origin
:class:`~ledger.errors.VerificationError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.c2sp_text import (
    DECIMAL,
    MAX_UINT64,
    MalformedError,
    b64,
    b64decode_canonical,
    check_name,
    check_utf8_text,
)
from ledger.errors import VerificationError
from ledger.merkle import HASH_SIZE
from ledger.signed_note import Verifier, key_id, make_vkey, open_note, sign_note


class Signer:
    """The ledger's note signer: a key name and an Ed25519 private key."""

    __slots__ = ("_private", "name", "public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519PrivateKey, got {type(private_key).__name__}")
        self.name = check_name(name)
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
        check_utf8_text(self.origin, "checkpoint origin")
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size <= MAX_UINT64
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
            check_utf8_text(ext, "checkpoint extension line")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Strictly parse a checkpoint body (the note text, ending with a newline)."""
        check_utf8_text(text, "checkpoint")
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
        if not DECIMAL.match(size_s):
            raise MalformedError(
                f"checkpoint line 2 (tree size): {size_s!r} is not an ASCII decimal without "
                "leading zeros",
                field="size",
            )
        size = int(size_s)
        if size > MAX_UINT64:
            raise MalformedError(
                f"checkpoint line 2 (tree size): {size_s} does not fit in 64 bits", field="size"
            )
        root = b64decode_canonical(root_s, "checkpoint line 3 (root hash)")
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
