"""Witnessed checkpoints against two real litewitness processes (filippo.io/torchwood): every
checkpoint gets both cosignatures, a witness that was down catches up with a consistency proof,
appends never wait on witnesses, and a forked store is refused by the witnesses and flagged by
the auditor (docs/WITNESS.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.processes import wait_for
from ledger.client import CheckpointInfo, LedgerClient
from ledger.core import Receipt
from ledger.cosignature import verify_cosignatures
from ledger.scenario import Cast, Flow, followed_state
from ledger.server import LedgerServerConfig, RunningServer, serve
from ledger.signed_note import make_vkey, open_note_full
from ledger.witness import WitnessEndpoint
from tests.fixtures.witness import Litewitness

ORIGIN = "steward.dev/ledger/demo"  # ledger.scenario.Flow's origin and checkpoint key name


@dataclass
class Ledger:
    running: RunningServer
    client: LedgerClient
    flow: Flow

    def append(self, n: int) -> None:
        for _ in range(n):
            receipt = self.client.append(self.flow.propose())
            assert isinstance(receipt, Receipt)

    def stop(self) -> None:
        self.client.close()
        self.running.stop(None)


def _ledger_vkey(cast: Cast) -> str:
    return make_vkey(ORIGIN, cast.checkpoint_key.public.raw)


def _start(db: Path, cast: Cast, witnesses: list[str], **config: object) -> Ledger:
    running = serve(
        LedgerServerConfig(
            store=db,
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_entries=3,
            checkpoint_every_ms=0,
            witnesses=tuple(WitnessEndpoint.parse(w) for w in witnesses),
            witness_timeout_s=2.0,
            witness_max_backoff_s=1.0,
            **config,  # type: ignore[arg-type]
        )
    )
    client = LedgerClient(running.address, timeout=10, retries=0)
    return Ledger(running, client, Flow(cast, state=followed_state(client.read)))


def _genesis(ledger: Ledger) -> None:
    ledger.client.append(ledger.flow.genesis())
    for result in ledger.client.append_many(ledger.flow.grants()):
        assert isinstance(result, Receipt)
    ledger.client.append(ledger.flow.policy())


def _cosigners(cp: CheckpointInfo, witnesses: list[Litewitness]) -> set[str]:
    """The witnesses whose valid cosignatures `cp`'s note carries (the note itself verified)."""
    opened = open_note_full(cp.note, _vkey_of(cp))
    cosigs = verify_cosignatures(opened.unverified, opened.text, [w.key for w in witnesses])
    return {c.witness for c in cosigs}


def _vkey_of(cp: CheckpointInfo) -> str:
    return _VKEYS[cp.origin]


_VKEYS: dict[str, str] = {}


@pytest.fixture
def cast() -> Cast:
    c = Cast.create()
    _VKEYS[ORIGIN] = _ledger_vkey(c)
    return c


@pytest.fixture
def two(witnesses: Callable[[str], Litewitness], cast: Cast) -> list[Litewitness]:
    out = []
    for name in ("witness.test/w1", "witness.test/w2"):
        w = witnesses(name)
        w.add_log(ORIGIN, _ledger_vkey(cast))
        out.append(w.start())
    return out


def _wait_cosigned(
    ledger: Ledger, witnesses: list[Litewitness], size: int, timeout: float = 60
) -> CheckpointInfo:
    def done() -> CheckpointInfo | None:
        cp = ledger.client.checkpoint()
        if cp.size >= size and _cosigners(cp, witnesses) == {w.name for w in witnesses}:
            return cp
        return None

    return wait_for(f"a checkpoint of size >= {size} cosigned by both", done, timeout)


def test_every_checkpoint_gets_both_cosignatures(
    tmp_path: Path, cast: Cast, two: list[Litewitness]
) -> None:
    # litewitness prints its vkey: the key ID rule of tlog-cosignature (type 0x04) matches ours.
    for w in two:
        wait_for("litewitness's vkey line", lambda w=w: w.vkey in w.log(), 10)
    ledger = _start(tmp_path / "ledger.db", cast, [w.flag(f"w{i}") for i, w in enumerate(two)])
    try:
        _genesis(ledger)
        for _ in range(4):
            ledger.append(3)
            _wait_cosigned(ledger, two, ledger.client.checkpoint(publish_now=True).size)
        published = ledger.client.checkpoints()
        assert len(published) >= 5
        for cp in published:
            assert _cosigners(cp, two) == {w.name for w in two}, cp.note
        status = ledger.running.witnessing.status()  # type: ignore[union-attr]
        assert all(s.refusals == 0 and s.cosigned_size == published[-1].size for s in status)
        newest = published[-1]
    finally:
        ledger.stop()
    # Stored with the checkpoint: a restarted server publishes the same cosigned note.
    again = _start(tmp_path / "ledger.db", cast, [])
    try:
        assert again.client.checkpoint().note == newest.note
        assert [c.note for c in again.client.checkpoints()] == [c.note for c in published]
    finally:
        again.stop()
