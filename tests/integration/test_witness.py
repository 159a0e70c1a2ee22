"""Witnessed checkpoints against two real litewitness processes (filippo.io/torchwood): every
checkpoint gets both cosignatures, a witness that was down catches up with a consistency proof,
appends never wait on witnesses, and a forked store is refused by the witnesses and flagged by
the auditor (docs/WITNESS.md)."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.kafka_cluster import KafkaCluster
from infra.processes import free_port, wait_for
from ledger.client import CheckpointInfo, LedgerClient
from ledger.core import Receipt
from ledger.cosignature import verify_cosignatures
from ledger.recovery import restore_sqlite
from ledger.scenario import Cast, Flow, followed_state
from ledger.server import LedgerServerConfig, RunningServer, serve
from ledger.signed_note import make_vkey, open_note_full
from ledger.store.base import LogStore
from ledger.store.kafka import KafkaLogStore
from ledger.store.kafka_config import KafkaStoreConfig
from ledger.store.sqlite import SQLiteLogStore
from ledger.witness import WitnessEndpoint, WitnessStatus
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


def _start(db: Path | LogStore, cast: Cast, witnesses: list[str], **config: object) -> Ledger:
    settings: dict[str, object] = {
        "checkpoint_every_entries": 3,
        "checkpoint_every_ms": 0,
        "witness_timeout_s": 10.0,  # a loaded machine: a slow answer must not skip a checkpoint
        "witness_max_backoff_s": 1.0,
        **config,
    }
    running = serve(
        LedgerServerConfig(
            store=db,
            checkpoint_key=cast.checkpoint_key,
            witnesses=tuple(WitnessEndpoint.parse(w) for w in witnesses),
            **settings,  # type: ignore[arg-type]
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
    ledger = _start(
        tmp_path / "ledger.db",
        cast,
        [w.flag(f"w{i}") for i, w in enumerate(two)],
        tiles_listen="127.0.0.1:0",
    )
    try:
        _genesis(ledger)
        for _ in range(4):
            ledger.append(3)
            _wait_cosigned(ledger, two, ledger.client.checkpoint(publish_now=True).size)
        published = ledger.client.checkpoints()
        assert len(published) >= 5
        for cp in published:
            assert _cosigners(cp, two) == {w.name for w in two}, cp.note
        # (The status is updated just after the cosignature is kept.)
        for label in ("w0", "w1"):
            wait_for(
                f"{label}'s status",
                lambda lb=label: status_of(ledger, lb).cosigned_size == published[-1].size,
            )
            assert status_of(ledger, label).refusals == 0
        newest = published[-1]
        # The tiles endpoint serves the same cosigned note at `checkpoint` (docs/TILES.md).
        with urllib.request.urlopen(f"{ledger.running.tiles_url}checkpoint", timeout=10) as r:
            assert r.read().decode() == newest.note
    finally:
        ledger.stop()
    # Stored with the checkpoint: a restarted server publishes the same cosigned note, and so
    # does one on a copy `steward store restore` made.
    store = SQLiteLogStore(tmp_path / "ledger.db", read_only=True)
    try:
        restore_sqlite(tmp_path / "restored.db", store=store)
    finally:
        store.close()
    for db in ("ledger.db", "restored.db"):
        again = _start(tmp_path / db, cast, [])
        try:
            assert again.client.checkpoint().note == newest.note
            assert [c.note for c in again.client.checkpoints()] == [c.note for c in published]
        finally:
            again.stop()


def test_a_witness_down_for_a_while_catches_up_with_a_consistency_proof(
    tmp_path: Path, cast: Cast, two: list[Litewitness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ledger.witness")
    ledger = _start(tmp_path / "ledger.db", cast, [w.flag(f"w{i}") for i, w in enumerate(two)])
    try:
        _genesis(ledger)
        before = _wait_cosigned(ledger, two, ledger.client.checkpoint(publish_now=True).size)
        up, down = two
        down.stop_witness()
        for _ in range(3):
            ledger.append(3)
            size = ledger.client.checkpoint(publish_now=True).size
            _wait_cosigned(ledger, [up], size)
        missed = [c for c in ledger.client.checkpoints() if c.size > before.size]
        assert missed and all(_cosigners(c, two) == {up.name} for c in missed)
        wait_for("failures to reach the down witness", lambda: status_of(ledger, "w1").failures)
        down.start()
        newest = _wait_cosigned(ledger, two, size)
        assert newest.size == size

        # It caught up in one request: from the size it had cosigned, with a proof.
        def caught_up() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if "witness_cosigned witness=w1" in r.getMessage()
                and f"size={size} " in r.getMessage()
            ]

        wait_for("w1's witness_cosigned line", caught_up)  # logged just after it is kept
        lines = caught_up()
        assert len(lines) == 1, lines
        assert f"old={before.size} " in lines[0] and " proof=0 " not in lines[0]
        assert (
            status_of(ledger, "w1").cosigned_size == size and status_of(ledger, "w1").refusals == 0
        )
    finally:
        ledger.stop()


def status_of(ledger: Ledger, label: str) -> WitnessStatus:
    witnessing = ledger.running.witnessing
    assert witnessing is not None
    return next(s for s in witnessing.status() if s.label == label)


class _Silent:
    """A TCP listener that accepts and never answers: a witness that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


def test_appends_never_wait_on_witnesses(tmp_path: Path, cast: Cast) -> None:
    # One witness refuses connections (down), one accepts and never answers (hung, with a
    # timeout longer than the whole test): appends and checkpoints go on regardless.
    hung = _Silent()
    key = WitnessEndpoint.parse(f"x=http://127.0.0.1:1,{_fake_witness_vkey()}").key
    flags = [
        f"down=http://127.0.0.1:{free_port()},{key.vkey}",
        f"hung=http://127.0.0.1:{hung.port},{_fake_witness_vkey('witness.test/hung')}",
    ]
    ledger = _start(tmp_path / "ledger.db", cast, flags, witness_timeout_s=120.0)
    try:
        started = time.monotonic()
        _genesis(ledger)
        wait_for("the hung witness to hold a request", lambda: hung.accepted, 30)
        ledger.append(30)
        size = ledger.client.checkpoint(publish_now=True).size
        took = time.monotonic() - started
        assert size == ledger.client.head().size >= 40
        assert took < 60, f"appends took {took:.1f}s with every witness down or hung"
        assert len(ledger.client.checkpoints()) >= 10
        assert all(_cosigners(c, []) == set() for c in ledger.client.checkpoints())
        assert status_of(ledger, "down").failures >= 1
        assert status_of(ledger, "hung").cosignatures == 0
    finally:
        hung.close()
        ledger.stop()


def _fake_witness_vkey(name: str = "witness.test/down") -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from ledger.cosignature import WitnessKey

    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return WitnessKey(name, raw).vkey


def _backup(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite store, as `sqlite3 SOURCE ".backup TARGET"` makes."""
    import sqlite3

    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def test_a_forked_store_is_refused_by_the_witnesses_and_flagged_by_the_auditor(
    tmp_path: Path, cast: Cast, two: list[Litewitness], capsys: pytest.CaptureFixture[str]
) -> None:
    from audit.cli import main as audit
    from ledger.export import write_export, write_trust_root

    flags = [w.flag(f"w{i}") for i, w in enumerate(two)]
    main = _start(tmp_path / "main.db", cast, flags)
    _genesis(main)
    shared = _wait_cosigned(main, two, main.client.checkpoint(publish_now=True).size)
    main.stop()
    # The operator copies the store: from here on the two copies tell different stories.
    _backup(tmp_path / "main.db", tmp_path / "fork.db")
    main = _start(tmp_path / "main.db", cast, flags)
    fork = None
    try:
        main.append(3)
        honest = _wait_cosigned(main, two, main.client.checkpoint(publish_now=True).size)
        fork = _start(tmp_path / "fork.db", cast, flags)
        fork.append(6)  # other proposals: the same sizes, other roots
        forked = fork.client.checkpoint(publish_now=True)
        assert forked.size > honest.size and forked.root != main.client.head().root
        # Each witness refuses the fork: its size (the honest one's) is not the fork's, and
        # from there the fork's consistency proof does not verify.
        for label in ("w0", "w1"):
            wait_for(f"{label} to refuse the fork", lambda lb=label: status_of(fork, lb).refusals)
        assert all(_cosigners(c, two) == set() for c in fork.client.checkpoints()[-2:])
        proof = fork.running.ledger.consistency_proof(honest.size, forked.size).proof
        body = f"old {honest.size}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof)
        note = fork.running.ledger.checkpoint(forked.size).note
        for w in two:
            assert w.add_checkpoint(f"old {shared.size}\n\n{note}") == (409, f"{honest.size}\n")
            assert w.add_checkpoint(body + "\n" + note)[0] == 422
        # The auditor, trusting both witnesses: the honest log verifies, the fork does not.
        trust = tmp_path / "trust.json"
        write_trust_root(main.client, trust, witnesses=[w.vkey for w in two])
        write_export(main.client, tmp_path / "main.avro", progress=False, cosignatures=2)
        write_export(fork.client, tmp_path / "fork.avro", progress=False)
        capsys.readouterr()
        args = ["verify", "--trust-root", str(trust), "--no-progress"]
        seen = tmp_path / "seen.note"
        main_ok = audit(
            [*args, "--export", str(tmp_path / "main.avro"), "--save-checkpoint", str(seen)]
        )
        assert main_ok == 0, capsys.readouterr().out
        assert audit([*args, "--export", str(tmp_path / "fork.avro")]) == 1
        out = capsys.readouterr().out
        assert "CHECKPOINT_UNWITNESSED" in out and f"size {forked.size})" in out, out
        # With the checkpoint it saw before, the auditor also sees the history rewritten.
        assert (
            audit([*args, "--export", str(tmp_path / "fork.avro"), "--since-checkpoint", str(seen)])
            == 1
        )
        assert "CHECKPOINT_FORK" in capsys.readouterr().out
    finally:
        if fork is not None:
            fork.stop()
        main.stop()


def test_a_witness_that_does_not_know_the_log_yet_is_retried_until_it_does(
    tmp_path: Path, cast: Cast, witnesses: Callable[[str], Litewitness]
) -> None:
    w = witnesses("witness.test/late").start()  # running, but the log is not added yet
    ledger = _start(tmp_path / "ledger.db", cast, [w.flag("late")])
    try:
        _genesis(ledger)
        size = ledger.client.checkpoint(publish_now=True).size
        wait_for("a 403 from the witness", lambda: "403" in status_of(ledger, "late").last_error)
        assert _cosigners(ledger.client.checkpoint(), [w]) == set()
        w.add_log(ORIGIN, _ledger_vkey(cast))  # witnessctl, while litewitness runs
        assert _wait_cosigned(ledger, [w], size).size == size
        assert status_of(ledger, "late").refusals == 0
    finally:
        ledger.stop()


@pytest.mark.kafka
def test_on_kafka_the_cosignatures_reach_the_checkpoints_topic_and_the_auditor(
    tmp_path: Path,
    cast: Cast,
    two: list[Litewitness],
    kafka_cluster: KafkaCluster,
    kafka_topic_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from audit.cli import main as audit
    from ledger.export import write_trust_root

    config = KafkaStoreConfig(
        bootstrap_servers=kafka_cluster.bootstrap_servers, topic=kafka_topic_name
    )
    store = KafkaLogStore(config)
    ledger = _start(store, cast, [w.flag(f"w{i}") for i, w in enumerate(two)])
    try:
        _genesis(ledger)
        ledger.append(3)
        size = _wait_cosigned(ledger, two, ledger.client.checkpoint(publish_now=True).size).size
        stored = {c.size: c for c in store.checkpoints()}
        assert len(stored[size].cosignatures) == 2
        trust = tmp_path / "trust.json"
        write_trust_root(ledger.client, trust, witnesses=[w.vkey for w in two])
        capsys.readouterr()
        args = ["verify", "--kafka", kafka_cluster.bootstrap_servers, "--topic", kafka_topic_name]
        assert audit([*args, "--trust-root", str(trust), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["verified_checkpoint_size"] == size and report["pending"] is None, report
    finally:
        ledger.stop()
        store.close()
