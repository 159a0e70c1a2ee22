"""ledger.replay_checks: a replay whose signatures a libsodium worker checks a chunk ahead of
the fold reaches, record for record, what the fold reaches verifying them itself."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import ledger.rules
import ledger.writer
from ledger.core import LedgerCore
from ledger.errors import FormatError, StoreDamagedError
from ledger.formats import (
    KeyGranted,
    LedgerGenesis,
    LogEntry,
    Signature,
    decode_body,
    decode_log_entry,
    encode_entry,
    encode_signed_event,
    make_entry,
)
from ledger.integrity import ChainCheck, Skip
from ledger.keys import PublicKey, key_id
from ledger.model import SignedEvent
from ledger.replay_checks import chunks, fold_checked_ahead, replay_checker
from ledger.scenario import Cast, Flow
from ledger.sigcheck import SignatureChecker
from ledger.store.sqlite import SQLiteLogStore
from ledger.writer import LedgerServer

CAST = Cast.create(seed="replay-checks")


def _ledger() -> tuple[list[LogEntry], Flow, list[SignedEvent]]:
    """Genesis, grants, a key granted and used at once, the same key revoked, then a few
    hundred proposals, evals and health reports: signatures by keys known long before, and by
    one granted in the same chunk."""
    flow = Flow(CAST)
    core = LedgerCore(keep_entries=True)
    clock = iter(range(1_000, 100_000))
    events: list[SignedEvent] = []

    def add(event: SignedEvent) -> bytes:
        events.append(event)
        return core.append(event, lambda: next(clock)).leaf_hash

    add(flow.genesis())
    for grant in flow.grants():
        add(grant)
    add(flow.policy())
    spare = CAST.extra_key("spare", seed="replay-checks")
    add(flow.grant_key(CAST["agent"].principal, spare, ("proposer",)))
    payload = decode_body(flow.propose("registry.example/spare:1").body).payload
    add(flow.signed_by_keys(payload, spare))  # signed by a key granted one entry before
    for i in range(120):
        proposal = add(flow.propose(f"registry.example/m:v{i}", deployment=f"m{i % 8}"))
        add(flow.eval(proposal, "safety", 0.99))
        add(flow.health(proposal, 0))
    add(flow.revoke(spare.key_id))
    assert core.entries is not None
    return core.entries, flow, events


ENTRIES, FLOW, EVENTS = _ledger()


def _bad_signature(e: LogEntry) -> bytes:
    sig = e.entry.signatures[0]
    flipped = Signature(sig.key_id, bytes([sig.sig[0] ^ 1]) + sig.sig[1:])
    return encode_entry(replace(e.entry, signatures=(flipped, *e.entry.signatures[1:])))


def _by_revoked_key() -> bytes:
    """The next entry, as an intruder holding the revoked key would write it: its signature is
    valid Ed25519 (so the worker says yes), and only the rules can refuse it."""
    last = ENTRIES[-1]
    spare = CAST.extra_key("spare", seed="replay-checks")
    payload = decode_body(FLOW.propose("registry.example/late:1").body).payload
    return make_entry(
        last.seq + 1, last.leaf_hash, FLOW.signed_by_keys(payload, spare), 200_000
    ).entry_bytes


def _records() -> list[tuple[int, bytes]]:
    """The clean chain with foreign records among it: junk, a bad signature, a stored entry
    again, and at the tail one signed by a revoked key."""
    values = [e.entry_bytes for e in ENTRIES]
    stray = make_entry(
        ENTRIES[200].seq + 1, ENTRIES[200].leaf_hash, FLOW.propose("registry.example/x:1"), 5
    )
    values[201:201] = [b"junk", _bad_signature(stray), ENTRIES[3].entry_bytes]
    values.append(_by_revoked_key())
    return list(enumerate(values))


def _plain(records: list[tuple[int, bytes]]) -> tuple[ChainCheck, list[Skip | None]]:
    chain = ChainCheck()
    return chain, [chain.add(p, v) for p, v in records]


def _ahead(
    records: list[tuple[int, bytes]], checker: SignatureChecker | None, chunk: int
) -> tuple[ChainCheck, list[Skip | None]]:
    chain = ChainCheck()
    return chain, list(fold_checked_ahead(chain, records, checker, chunk=chunk))


def _same(a: ChainCheck, b: ChainCheck) -> None:
    assert (a.size, a.records, a.skipped) == (b.size, b.records, b.skipped)
    assert a.core.tree.root() == b.core.tree.root()
    assert a.core.state.last_hash == b.core.state.last_hash
    assert list(a.positions) == list(b.positions)


@pytest.fixture
def checker() -> Iterator[SignatureChecker]:
    c = replay_checker()
    assert c is not None, "the test machine has more than one core: a worker is expected"
    assert not c.native, "a replay checks with libsodium, never the native verifier"
    yield c
    c.close()


@pytest.fixture
def inline_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the signatures the rules verify themselves."""
    count = [0]
    real = PublicKey.verify

    def counting(self: PublicKey, sig: bytes, message: bytes) -> bool:
        count[0] += 1
        return real(self, sig, message)

    monkeypatch.setattr(ledger.rules.PublicKey, "verify", counting)
    return count


@pytest.mark.parametrize("chunk", [1, 7, 64, 1024])
def test_the_same_outcome_record_for_record(
    checker: SignatureChecker, inline_checks: list[int], chunk: int
) -> None:
    records = _records()
    plain, expected = _plain(records)
    inline_plain = inline_checks[0]
    ahead, got = _ahead(records, checker, chunk)
    assert got == expected
    _same(ahead, plain)
    assert [(s.position, s.reason) for s in got if s is not None] == [
        (201, "malformed"),
        (202, "BAD_SIGNATURE"),
        (203, "SEQ_MISMATCH"),
        (len(records) - 1, "KEY_REVOKED"),
    ]
    # The worker did the checking: the rules verified only the signatures by keys the state
    # did not know when their chunk was decoded, and the bad one, which the worker refused.
    extra = inline_checks[0] - inline_plain
    assert extra <= _unknown_when_decoded(records, chunk) + 1, (inline_plain, extra)
    if 2 * chunk < len(records):
        assert extra < inline_plain // 2


def _unknown_when_decoded(records: list[tuple[int, bytes]], chunk: int) -> int:
    """Signatures by a key granted in the chunk before theirs or their own (or by a root, while
    the genesis is not folded): a chunk is decoded before the one ahead of it is folded."""
    granted: dict[bytes, int] = {}
    unknown = 0
    for i, (_, value) in enumerate(records):
        try:
            e = decode_log_entry(value)
        except FormatError:
            continue
        folded_before = (i // chunk - 1) * chunk  # records of the chunks folded at decode
        unknown += sum(granted.get(s.key_id, i) >= folded_before for s in e.entry.signatures)
        payload = e.body.payload
        if isinstance(payload, LedgerGenesis):
            granted.update((key_id(r.public_key), i) for r in payload.roots)
        elif isinstance(payload, KeyGranted):
            granted.setdefault(key_id(payload.public_key), i)
    return unknown


def test_a_chunk_is_cut_by_its_weight_too(checker: SignatureChecker) -> None:
    """Big entries (64 KiB bodies, 16 signatures) must not make a chunk of 1,024 weigh a GiB:
    a chunk ends once its records and the bytes sent with its signatures pass chunk_bytes."""
    records = _records()
    plain, expected = _plain(records)
    values = dict(records)
    cut = list(chunks(records, lambda: plain.core.state.keys, chunk=1024, chunk_bytes=4_000))
    assert [p for decoded, _ in cut for p, _ in decoded] == [p for p, _ in records]
    assert len(cut) > len(records) // 20
    for decoded, pending in cut:
        assert pending.items, "every key is known: each chunk has signatures to send"
        sent = [len(m) for _, _, m in pending.items]
        last = decoded[-1][1]
        assert isinstance(last, LogEntry)
        last_sent = sum(
            n for n, b in zip(sent, pending.bodies, strict=True) if b == last.entry.body
        )
        before_last = sum(len(values[p]) for p, _ in decoded) + sum(sent)
        before_last -= len(values[decoded[-1][0]]) + last_sent
        assert before_last < 4_000  # the chunk was under its weight until its last record
    ahead = ChainCheck()
    got = list(fold_checked_ahead(ahead, records, checker, chunk=1024, chunk_bytes=4_000))
    assert got == expected
    _same(ahead, plain)


def test_without_a_checker_the_fold_verifies_in_line(inline_checks: list[int]) -> None:
    records = _records()
    plain, expected = _plain(records)
    per_fold = inline_checks[0]
    ahead, got = _ahead(records, None, 64)
    assert got == expected
    _same(ahead, plain)
    assert inline_checks[0] == 2 * per_fold


def test_a_worker_killed_mid_replay_changes_nothing(checker: SignatureChecker) -> None:
    """The worker dies between chunks: the checker verifies that chunk itself and starts a new
    worker for the next one; the fold's outcome is the same."""
    records = _records()
    plain, expected = _plain(records)
    chain = ChainCheck()
    got: list[Skip | None] = []
    killed = []
    for skip in fold_checked_ahead(chain, records, checker, chunk=32):
        got.append(skip)
        pid = checker.worker_pid()
        if len(got) == 64 and pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    assert killed, "the worker was running mid-replay"
    assert got == expected
    _same(chain, plain)
    assert checker.fallbacks >= 1
    assert checker.worker_pid() not in (None, killed[0])


def test_damage_is_refused_the_same_way(checker: SignatureChecker) -> None:
    """An acknowledged entry whose signature was changed, with its successors after it."""
    values = [e.entry_bytes for e in ENTRIES]
    values[150] = _bad_signature(ENTRIES[150])
    records = list(enumerate(values))
    messages = []
    for fold in (lambda: _plain(records), lambda: _ahead(records, checker, 16)):
        chain, _ = fold()
        with pytest.raises(StoreDamagedError) as err:
            chain.finish()
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "seq 150" in messages[0] and "BAD_SIGNATURE" in messages[0]


@pytest.mark.parametrize("verify_ahead", [True, False])
def test_a_server_starts_on_the_same_head(
    tmp_path: Path,
    verify_ahead: bool,
    monkeypatch: pytest.MonkeyPatch,
    inline_checks: list[int],
) -> None:
    """A server started on the same store either way: same size, root and checkpoints, and no
    signature worker left running once it serves. Chunks of 32, so that this short log has
    chunks whose keys are known and the worker really checks them."""
    monkeypatch.setattr(
        ledger.writer, "fold_checked_ahead", functools.partial(fold_checked_ahead, chunk=32)
    )
    path = tmp_path / "ledger.sqlite"
    store = SQLiteLogStore(str(path))
    clock = iter(range(1_000, 100_000))  # as _ledger's: the same entries, refs included
    first = LedgerServer(
        store, CAST.checkpoint_key, checkpoint_every_ms=0, clock=lambda: next(clock)
    )
    first.start()
    for event in EVENTS:
        first.append(encode_signed_event(event))
    head = first.head()
    first.stop()
    first.close()
    store.close()

    store = SQLiteLogStore(str(path))
    again = LedgerServer(
        store, CAST.checkpoint_key, checkpoint_every_ms=0, verify_ahead=verify_ahead
    )
    try:
        before = inline_checks[0]
        report = again.start()
        inline = inline_checks[0] - before
        signatures = sum(len(e.entry.signatures) for e in ENTRIES)
        assert (inline < signatures // 2) if verify_ahead else (inline == signatures)
        assert report.entries == len(ENTRIES)
        assert again.head() == head
        assert not _sigworkers(), "the start's worker outlived it"
    finally:
        again.stop()
        again.close()
        store.close()


def _sigworkers() -> list[int]:
    """This process's children running ledger.sigworker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"ledger.sigworker" in cmdline:
            found.append(int(pid))
    return found
