"""SIGKILL of a controller process while it writes and compacts snapshot parts (issue #19).

A child process folds a log one entry at a time and writes a part after every entry, with the
compactor merging parts in the background, so most instants of its life are inside a part write
or a compaction. It is killed at random instants, again and again; after every kill the
snapshot database must load as the state folded from exactly the first `size` entries (or hold
no snapshot yet), and the next start must carry on from there to the end.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.snapshot_store import SnapshotStore
from controller.state import ControllerState
from ledger.store.sqlite import SQLiteLogStore
from tests.unit.test_controller_snapshot_parts import longer_harness

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
import controller.snapshot_store as snapshot_store
from controller.replay import Replayer
from controller.snapshot_store import SnapshotStore
from ledger.store.sqlite import SQLiteLogStore

snapshot_store.REBASE_MIN_ENTRIES = 8  # compactions at a test log's size
log, snaps = SQLiteLogStore(sys.argv[1]), SnapshotStore(sys.argv[2])
r = Replayer(log, snapshots=snaps, source="t")
r.load_snapshot()
print("ready", r.position, flush=True)
for record in log.read(r.position):
    r.handle(record)
    r.snapshot()
snaps.wait_idle(60)
print("done", r.position, flush=True)
"""


def fold_prefix(entries: list, size: int) -> ControllerState:  # type: ignore[type-arg]
    state = ControllerState()
    for e in entries[:size]:
        assert state.fold(e) is None
    return state


def test_sigkill_during_part_writes_and_compactions_loses_nothing(tmp_path: Path) -> None:
    h, p = longer_harness()
    for i in range(900):
        h.ok(h.flow.health(p, 1, i % 5 != 0))
    entries = list(h.core.entries or [])
    log = SQLiteLogStore(tmp_path / "log.db")
    log.append([(e.body.event_id, e.entry_bytes) for e in entries])
    log.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(19)
    kills, restarts_from = 0, []
    # Twelve kills at random instants, then a run left to finish (the machine's speed only
    # changes where the kills land, not whether the test ends).
    for round_ in range(13):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path / "log.db"), str(tmp_path / "snap.db")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready and ready[0] == "ready", ready
        restarts_from.append(int(ready[1]))
        if round_ < 12:
            time.sleep(rng.uniform(0.005, 0.12))
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                kills += 1
        out, _ = child.communicate(timeout=300)
        loaded = SnapshotStore(tmp_path / "snap.db").load("t")
        if loaded is None:
            assert restarts_from == [0] * len(restarts_from), "a snapshot was lost"
            continue
        size = loaded.state.ledger.size
        assert loaded.position == size and size >= restarts_from[-1]
        assert loaded.state == fold_prefix(entries, size), f"after kill {kills} at size {size}"
        if "done" in out:
            break
    assert "done" in out, "the run left to finish did not"
    assert kills >= 8, f"only {kills} kills landed before the child finished"
    assert restarts_from[-1] > 0  # the last start came back from a snapshot, not from zero
    assert loaded is not None and loaded.state == fold_prefix(entries, len(entries))
