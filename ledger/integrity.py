"""Verifying a stored ledger: its chain, its signed checkpoints, and damage versus foreign records.

Storage is not trusted (DESIGN §2.2). Whoever folds a store (the writer on start and after a
failed write, ``steward store check`` offline) feeds its records here in store order, in one
pass that is also the fold the writer needs anyway (state and Merkle tree). Each record either
**extends the chain** (it decodes, its seq is the next one, its prev is the leaf hash of the
last entry, and the rules accept it) or it does not. One that does not is one of two things:

* **foreign**: a record the ledger never acknowledged, written around the server. It is
  skipped and counted, as DESIGN §2.2 says. The ledger only ever writes the next entry of its
  own chain, so the chain goes on after a foreign record: the ledger's later entries extend it.
* **damage**: an entry the ledger acknowledged that is now missing or changed. The chain does
  not go on after it. It shows as (a) records after the break that claim a later seq than the
  chain's next one (the ledger's successors of the lost entry), (b) a record at the next seq
  whose prev is not the chain's last leaf hash (one of the two entries changed), (c) a signed
  checkpoint for more entries than the chain holds, or (d) a signed checkpoint whose root the
  entries do not give. A stored checkpoint that does not verify with the genesis's
  checkpoint key is damage too: every note in the store is one the ledger signed.

Damage is reported as one :class:`Damage` (the first seq concerned and what is wrong) in a
:class:`~ledger.errors.StoreDamagedError`; the caller refuses to append over it.

What cannot be told apart (docs/security/storage.md): the newest entries, while no signed
checkpoint covers them yet and nothing follows them. Deleted, or changed so that they no
longer extend the chain, they look like records never acknowledged, or like a foreign record
at the tail. The checkpoint timer bounds that window (one second by default).

Pure: no store, no I/O. The writer and the CLI pass records and checkpoint notes in.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from ledger import checkpoint as notes
from ledger.core import LedgerCore
from ledger.errors import FormatError, StoreDamagedError, VerificationError
from ledger.formats import LedgerGenesis, LogEntry, decode_log_entry
from ledger.rules import VerifiedSignature, check
from ledger.signed_note import Verifier

ZERO_HASH = bytes(32)


@dataclass(frozen=True)
class Damage:
    """The first damage found: `where` ("seq 12", "checkpoint #3 for size 40") and `what`."""

    where: str
    what: str
    seq: int | None = None  # the first seq concerned, when one can be named

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass(frozen=True)
class Skip:
    """A record that did not extend the chain (foreign, unless the end shows damage)."""

    position: int
    entry: LogEntry | None  # None when the record does not decode
    reason: str  # "malformed" or a rules violation code
    field: str
    detail: str

    @property
    def seq(self) -> int | None:
        return None if self.entry is None else self.entry.seq


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A stored checkpoint note that verified and matches the chain."""

    size: int
    note: str
    root: bytes
    origin: str


@dataclass
class ChainCheck:
    """Folds stored records into a fresh :class:`LedgerCore`, telling chain from the rest.

    `on_genesis` sees the genesis payload before it is folded (the writer refuses a genesis
    naming another checkpoint key there).
    """

    on_genesis: Callable[[LedgerGenesis], None] | None = None
    core: LedgerCore = field(default_factory=LedgerCore)
    # Store position of each seq: 8 bytes each, not an int object (the server keeps it).
    positions: array[int] = field(default_factory=lambda: array("q"))
    last_received_at: int = 0
    skipped: int = 0
    records: int = 0
    # The records since the last one that extended the chain: foreign if the chain goes on.
    _tail: list[Skip] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.core.size

    def add(self, position: int, value: bytes) -> Skip | None:
        """Fold the record if it extends the chain (None); otherwise hold and return its Skip."""
        try:
            e = decode_log_entry(value)
        except FormatError as exc:
            return self.add_malformed(position, exc)
        return self.add_entry(position, e)

    def add_malformed(self, position: int, exc: FormatError) -> Skip:
        """A record that did not decode (`exc`: what decode_log_entry raised on it)."""
        self.records += 1
        return self._hold(Skip(position, None, "malformed", "", str(exc)[:200]))

    def add_entry(
        self, position: int, e: LogEntry, verified: Container[VerifiedSignature] = ()
    ) -> Skip | None:
        """As :meth:`add`, for a record already decoded. `verified`: (public key, signature,
        body) triples already found valid with Ed25519, which the rules take as checked
        (rules.check); they verify every other signature themselves, so a triple missing from
        it costs a check, never a verdict."""
        self.records += 1
        core = self.core
        violation = check(core.state, e, verified)
        if violation is not None:
            return self._hold(
                Skip(position, e, violation.code, violation.field, violation.message[:200])
            )
        if e.seq == 0 and self.on_genesis is not None:
            payload = e.body.payload
            assert isinstance(payload, LedgerGenesis)
            self.on_genesis(payload)
        core.commit(e)
        self.positions.append(position)
        if e.entry.received_at > self.last_received_at:
            self.last_received_at = e.entry.received_at
        if self._tail:
            self._tail.clear()  # the chain went on: what it passed over was never acknowledged
        return None

    def _hold(self, skip: Skip) -> Skip:
        self.skipped += 1
        self._tail.append(skip)
        return skip

    def tail_damage(self) -> Damage | None:
        """Damage shown by the records after the chain's end, if they show any."""
        n, last = self.core.size, self.core.state.last_hash
        for skip in self._tail:
            e = skip.entry
            if e is not None and (e.seq > n or (e.seq == n and e.entry.prev != last)):
                return Damage(f"seq {n}", self.next_entry_problem(), n)
        return None

    def next_entry_problem(self) -> str:
        """What is wrong with seq `size` (the chain's next entry), from the records held."""
        n, last = self.core.size, self.core.state.last_hash
        for skip in self._tail:
            e = skip.entry
            if e is not None and e.seq == n:
                if e.entry.prev != last:
                    linked = f"the leaf hash of seq {n - 1}" if n else "32 zero bytes"
                    changed = f"seq {n - 1} or seq {n} was changed" if n else "it was changed"
                    return f"its prev is not {linked}: {changed} (store position {skip.position})"
                return (
                    f"changed: {skip.reason} on {skip.field or 'the entry'}: {skip.detail} "
                    f"(store position {skip.position})"
                )
        for skip in self._tail:
            if skip.entry is None:
                return (
                    f"missing or changed: the record at store position {skip.position} "
                    f"does not decode ({skip.detail})"
                )
        later = [s for s in (skip.seq for skip in self._tail) if s is not None and s > n]
        if later:
            after = f"the record after seq {n - 1}" if n else "the first record"
            return f"missing: {after} claims seq {min(later)}"
        return "missing"

    def finish(self) -> None:
        """Raise StoreDamagedError if the end of the store shows damage (see the module)."""
        damage = self.tail_damage()
        if damage is not None:
            raise _damaged(damage)


def verify_checkpoints(
    chain: ChainCheck, stored: Iterable[tuple[int, str]]
) -> list[VerifiedCheckpoint]:
    """Check every stored checkpoint note against the folded chain, in stored order.

    Each must verify with the checkpoint key and origin the genesis names, cover no more
    entries than the chain holds, and carry the root of the chain's first `size` entries.
    Raises StoreDamagedError naming the first seq concerned; returns them all otherwise.
    """
    stored = list(stored)
    if not stored:
        return []
    state, tree, n = chain.core.state, chain.core.tree, chain.core.size
    if n == 0:
        raise _damaged(
            Damage(
                "seq 0",
                f"{chain.next_entry_problem()}; {len(stored)} signed "
                "checkpoints are stored after it",
                0,
            )
        )
    verifier = Verifier(state.checkpoint_key_name, state.checkpoint_public_key)
    verified: list[VerifiedCheckpoint] = []
    for i, (size, note) in enumerate(stored, 1):
        try:
            cp = notes.verify_checkpoint(note, verifier, state.origin)
        except VerificationError as exc:
            raise _damaged(
                Damage(
                    f"checkpoint #{i} for size {size}",
                    f"does not verify with the ledger's checkpoint key: {exc}",
                )
            ) from None
        if cp.size != size:
            raise _damaged(
                Damage(f"checkpoint #{i} for size {size}", f"its signed note is for size {cp.size}")
            )
        if cp.size > n:
            raise _damaged(
                Damage(
                    f"seq {n}",
                    f"{chain.next_entry_problem()}; the signed "
                    f"checkpoint for size {cp.size} covers it",
                    n,
                )
            )
        verified.append(VerifiedCheckpoint(cp.size, note, cp.root, cp.origin))
    # Roots, smallest size first, so the damage named is the earliest one.
    matched = 0
    for checked in sorted(verified, key=lambda c: c.size):
        if checked.root == tree.root(checked.size):
            matched = max(matched, checked.size)
            continue
        last = checked.size - 1
        together = (
            f" (or seqs {matched}..{last} were rewritten together, links and all)"
            if matched < last
            else ""
        )
        raise _damaged(
            Damage(
                f"seq {last}",
                f"changed: the entries up to it do not give the root "
                f"the signed checkpoint for size {checked.size} names"
                f"{together}",
                last,
            )
        )
    return verified


def _damaged(damage: Damage) -> StoreDamagedError:
    return StoreDamagedError(f"the store is damaged at {damage}", damage)
