"""ledger.integrity: which stored records are foreign (skipped) and which are damage."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ledger import checkpoint as notes
from ledger.core import LedgerCore
from ledger.errors import StoreDamagedError
from ledger.formats import LogEntry, Signature, encode_entry, make_entry
from ledger.integrity import ChainCheck, verify_checkpoints
from ledger.scenario import Cast, Flow


@pytest.fixture(scope="module")
def ledger() -> tuple[list[LogEntry], Flow, Cast]:
    cast = Cast.create(seed="integrity")
    flow = Flow(cast)
    core = LedgerCore(keep_entries=True)
    clock = iter(range(1_000, 2_000))
    for event in [
        flow.genesis(),
        *flow.grants(),
        flow.policy(),
        *(flow.propose(f"registry.example/m:v{i}") for i in range(4)),
    ]:
        core.append(event, lambda: next(clock))
    assert core.entries is not None
    return core.entries, flow, cast


def fold(values: list[bytes]) -> ChainCheck:
    chain = ChainCheck()
    for position, value in enumerate(values):
        chain.add(position, value)
    return chain


def bad_signature(e: LogEntry) -> bytes:
    sig = e.entry.signatures[0]
    flipped = Signature(sig.key_id, bytes([sig.sig[0] ^ 1]) + sig.sig[1:])
    return encode_entry(replace(e.entry, signatures=(flipped, *e.entry.signatures[1:])))


def test_a_clean_store(ledger: tuple[list[LogEntry], Flow, Cast]) -> None:
    entries, _, _ = ledger
    chain = fold([e.entry_bytes for e in entries])
    chain.finish()
    assert (chain.size, chain.skipped) == (len(entries), 0)


@pytest.mark.parametrize("where", ["middle", "tail"])
def test_records_written_around_the_server_are_foreign(
    ledger: tuple[list[LogEntry], Flow, Cast], where: str
) -> None:
    entries, flow, _ = ledger
    last = entries[-1]
    # What an intruder who can read the topic might write next: garbage, an entry with the
    # right seq and prev but a bad signature, a stored entry again.
    stray = make_entry(last.seq + 1, last.leaf_hash, flow.propose("registry.example/x:1"), 5_000)
    foreign = [b"junk", bad_signature(stray), entries[2].entry_bytes]
    values = [e.entry_bytes for e in entries]
    values = values[:-1] + foreign + values[-1:] if where == "middle" else values + foreign
    chain = fold(values)
    chain.finish()
    assert (chain.size, chain.skipped) == (len(entries), len(foreign))


def test_a_later_seq_after_the_chain_is_damage(ledger: tuple[list[LogEntry], Flow, Cast]) -> None:
    entries, _, _ = ledger
    values = [e.entry_bytes for e in entries]
    del values[4]
    with pytest.raises(
        StoreDamagedError, match=r"at seq 4: missing: the record after seq 3 claims seq 5"
    ):
        fold(values).finish()


def test_a_changed_entry_with_successors_is_damage(
    ledger: tuple[list[LogEntry], Flow, Cast],
) -> None:
    entries, _, _ = ledger
    values = [e.entry_bytes for e in entries]
    values[3] = bad_signature(entries[3])
    with pytest.raises(StoreDamagedError, match=r"at seq 3: changed: BAD_SIGNATURE"):
        fold(values).finish()


def test_an_undecodable_entry_with_successors_is_damage(
    ledger: tuple[list[LogEntry], Flow, Cast],
) -> None:
    entries, _, _ = ledger
    values = [e.entry_bytes for e in entries]
    values[3] = values[3][:20]
    with pytest.raises(
        StoreDamagedError,
        match=r"at seq 3: missing or changed: the record at "
        r"store position 3 does not decode",
    ):
        fold(values).finish()


def test_checkpoints_are_verified(ledger: tuple[list[LogEntry], Flow, Cast]) -> None:
    entries, _, cast = ledger
    chain = fold([e.entry_bytes for e in entries])
    state = chain.core.state
    signer = notes.Signer(state.checkpoint_key_name, cast.checkpoint_key.ed25519)

    def note(size: int, root: bytes | None = None) -> str:
        root = chain.core.tree.root(min(size, chain.size)) if root is None else root
        return notes.sign_checkpoint(notes.Checkpoint(state.origin, size, root), signer)

    n = chain.size
    assert [c.size for c in verify_checkpoints(chain, [(3, note(3)), (n, note(n))])] == [3, n]
    with pytest.raises(
        StoreDamagedError,
        match=rf"at seq {n}: missing; the signed checkpoint "
        rf"for size {n + 1} covers it",
    ):
        verify_checkpoints(chain, [(n + 1, note(n + 1))])
    with pytest.raises(
        StoreDamagedError,
        match=r"at seq 5: changed: the entries up to it do not "
        r"give the root",
    ):
        verify_checkpoints(chain, [(6, note(6, bytes(32)))])
    with pytest.raises(StoreDamagedError, match=r"checkpoint #1 for size 3: does not verify"):
        verify_checkpoints(chain, [(3, note(3).replace("\n3\n", "\n2\n"))])
