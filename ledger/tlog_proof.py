"""C2SP tlog-proof@v1 bundles (https://c2sp.org/tlog-proof): an inclusion proof with its checkpoint.

`write_tlog_proof` makes one (``steward proof``), `verify_tlog_proof` checks the checkpoint's
signature and the inclusion proof of a leaf against its root; the format is :class:`TlogProof`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ledger.c2sp_text import DECIMAL, MAX_UINT64, MalformedError, b64, b64decode_canonical
from ledger.checkpoint import Checkpoint, verify_checkpoint
from ledger.errors import VerificationError
from ledger.merkle import HASH_SIZE, root_from_inclusion_proof
from ledger.signed_note import Verifier, split_note

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"


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
        split_note(self.checkpoint_note)

    def to_text(self) -> str:
        out = [TLOG_PROOF_HEADER + "\n"]
        if self.extra is not None:
            out.append(f"extra {b64(self.extra)}\n")
        out.append(f"index {self.index}\n")
        out.extend(b64(h) + "\n" for h in self.proof)
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
            extra = b64decode_canonical(lines[n][len("extra ") :], "tlog-proof line 2 (extra)")
            n += 1
        if n >= len(lines) or not lines[n].startswith("index "):
            got = lines[n] if n < len(lines) else "end of text"
            raise MalformedError(f"tlog-proof line {n + 1}: {got!r}, expected 'index <N>'")
        index_s = lines[n][len("index ") :]
        if not DECIMAL.match(index_s) or int(index_s) > MAX_UINT64:
            raise MalformedError(
                f"tlog-proof line {n + 1}: index {index_s!r} is not a 64-bit decimal without "
                "leading zeros"
            )
        index = int(index_s)
        n += 1
        hashes: list[bytes] = []
        while n < len(lines) and lines[n] != "":
            h = b64decode_canonical(lines[n], f"tlog-proof line {n + 1} (proof hash)")
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
            f"leads to root {b64(root)}, but the checkpoint of size {cp.size} has root "
            f"{b64(cp.root)}"
        )
    return cp
