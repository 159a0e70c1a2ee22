"""Attack 7 (#14): storage damage stops the server, never rewrites history.

Each case builds a real SQLite ledger through the writer, damages the file the way a failing
disk or a hand with write access would, then starts the real server process
(``python -m ledger.server``) on it: it must refuse with exit status 2 and one line naming the
seq and what is wrong, leave the stored records and checkpoints as they were (no acknowledged
seq handed out again), and ``steward store check`` must name the same damage offline.
Records written around the server stay what docs/DESIGN.md §2.2 says: skipped.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ledger.formats import decode_log_entry, encode_entry, encode_signed_event
from ledger.scenario import Cast, Flow
from ledger.store.sqlite import SQLiteLogStore
from ledger.writer import LedgerServer

ROOT = Path(__file__).resolve().parents[2]

# The ledger every case starts from: genesis, grants, a policy and proposals; a signed
# checkpoint at CHECKPOINT_SIZE, then TAIL more acknowledged entries that no checkpoint covers.
TAIL = 5


@dataclass
class Built:
    db: Path
    key: Path
    size: int  # entries in the log
    checkpoint_size: int  # the newest checkpoint's size


def build_ledger(tmp_path: Path, *, checkpoint_at_end: bool = False) -> Built:
    cast = Cast.create()
    flow = Flow(cast)
    key = tmp_path / "checkpoint.pem"
    cast.checkpoint_key.save(key)
    db = tmp_path / "ledger.db"
    store = SQLiteLogStore(db)
    writer = LedgerServer(
        store, cast.checkpoint_key, checkpoint_every_entries=10_000, checkpoint_every_ms=0
    )
    writer.start()
    try:
        for event in [flow.genesis(), *flow.grants(), flow.policy()]:
            writer.append(encode_signed_event(event))
        for i in range(4):
            writer.append(encode_signed_event(flow.propose(f"registry.example/m:v{i}")))
        checkpoint_size = writer.checkpoint(publish_now=True).size
        for i in range(TAIL):
            writer.append(encode_signed_event(flow.propose(f"registry.example/m:t{i}")))
        if checkpoint_at_end:
            checkpoint_size = writer.checkpoint(publish_now=True).size
        size = writer.head().size
    finally:
        writer.stop()
        writer.close()
        store.close()
    return Built(db, key, size, checkpoint_size)


def stored_rows(db: Path) -> tuple[list[tuple[object, ...]], ...]:
    """What the ledger keeps: every record, every checkpoint, and which tables exist (a start
    that refuses must not even create the tile table, ledger.tile_store), as stored."""
    con = sqlite3.connect(db)
    try:
        records = con.execute(
            "SELECT position, key, value FROM log_records ORDER BY position"
        ).fetchall()
        notes = con.execute("SELECT id, size, note FROM log_checkpoints ORDER BY id").fetchall()
        tables = con.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        con.close()
    return records, notes, tables


def record_value(db: Path, position: int) -> bytes:
    con = sqlite3.connect(db)
    try:
        (value,) = con.execute(
            "SELECT value FROM log_records WHERE position = ?", (position,)
        ).fetchone()
    finally:
        con.close()
    return bytes(value)


def put_record_value(db: Path, position: int, value: bytes) -> None:
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute("UPDATE log_records SET value = ? WHERE position = ?", (value, position))
    finally:
        con.close()


def flip_signature_bit(db: Path, seq: int) -> None:
    """One flipped bit inside the first signature of the entry at `seq` (SQLite position = seq)."""
    value = bytearray(record_value(db, seq))
    sig = decode_log_entry(bytes(value)).entry.signatures[0].sig
    at = bytes(value).find(sig)
    assert at > 0
    value[at + 10] ^= 0x04
    put_record_value(db, seq, bytes(value))


def shift_received_at(db: Path, seq: int) -> None:
    """The entry at `seq`, still well formed and chained, with a received_at one ms later."""
    e = decode_log_entry(record_value(db, seq))
    put_record_value(db, seq, encode_entry(replace(e.entry, received_at=e.entry.received_at + 1)))


def delete_record(db: Path, position: int) -> None:
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute("DELETE FROM log_records WHERE position = ?", (position,))
    finally:
        con.close()


def run_server(built: Built) -> subprocess.CompletedProcess[str]:
    """Start the server on the built file; if it comes up serving (the bug), stop it at once."""
    port_file = built.db.with_suffix(".port")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger.server",
            "--db",
            str(built.db),
            "--checkpoint-key",
            str(built.key),
            "--projections",
            "off",
            "--checkpoint-every-ms",
            "0",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and not port_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.terminate()
    stdout, stderr = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", "store", "check", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "nothing printed"
    return lines[-1]


def assert_refused(built: Built, seq_text: str, what: str) -> None:
    """The server refuses to start (exit 2, one line naming `seq_text` and `what`, no traceback)
    and leaves every record and checkpoint as it found them."""
    before = stored_rows(built.db)
    result = run_server(built)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = last_line(result.stderr)
    assert line.startswith("ledger server: refusing to start"), line
    assert seq_text in line and what in line, line
    assert not built.db.with_suffix(".port").exists()  # it never served
    assert stored_rows(built.db) == before  # nothing appended, nothing rewritten

    checked = run_check("--store", f"sqlite:{built.db}")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stderr, checked.stderr
    damage = last_line(checked.stderr)
    assert seq_text in damage and what in damage, damage
    assert stored_rows(built.db) == before


# --------------------------------------------------------------------------------------------
# Damage to entries: refused, naming the seq


def test_a_flipped_bit_after_the_newest_checkpoint_refuses_the_start(tmp_path: Path) -> None:
    built = build_ledger(tmp_path)
    seq = built.checkpoint_size + 1  # acknowledged, covered by no checkpoint, followed by more
    assert seq < built.size - 1
    flip_signature_bit(built.db, seq)
    assert_refused(built, f"seq {seq}:", "BAD_SIGNATURE")


def test_a_flipped_bit_before_the_newest_checkpoint_refuses_the_start(tmp_path: Path) -> None:
    built = build_ledger(tmp_path)
    seq = 3
    flip_signature_bit(built.db, seq)
    assert_refused(built, f"seq {seq}:", "BAD_SIGNATURE")


def test_a_deleted_entry_refuses_the_start(tmp_path: Path) -> None:
    built = build_ledger(tmp_path)
    seq = built.checkpoint_size + 2
    delete_record(built.db, seq)
    assert_refused(built, f"seq {seq}:", "missing")


def test_a_deleted_entry_under_a_checkpoint_at_the_tail_refuses_the_start(tmp_path: Path) -> None:
    # The last entry has no successor to give it away: the checkpoint covering it does.
    built = build_ledger(tmp_path, checkpoint_at_end=True)
    seq = built.size - 1
    delete_record(built.db, seq)
    assert_refused(built, f"seq {seq}:", f"checkpoint for size {built.size}")


def test_a_checkpoint_whose_root_disagrees_refuses_the_start(tmp_path: Path) -> None:
    # The last entry rewritten, still well formed and chained: only the signed root knows.
    built = build_ledger(tmp_path, checkpoint_at_end=True)
    seq = built.size - 1
    shift_received_at(built.db, seq)
    assert_refused(built, f"seq {seq}:", f"checkpoint for size {built.size}")


def test_a_changed_entry_followed_by_others_refuses_the_start(tmp_path: Path) -> None:
    # Well formed and signed, but not the entry its successor names as prev.
    built = build_ledger(tmp_path)
    seq = built.checkpoint_size + 1
    shift_received_at(built.db, seq)
    assert_refused(built, f"seq {seq + 1}:", "prev")


# --------------------------------------------------------------------------------------------
# A structurally corrupt SQLite file: one line, exit 2, no traceback


def truncate_half(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def garble_pages(db: Path) -> None:
    data = bytearray(db.read_bytes())
    for i in range(100, len(data), 7):  # the header's page size and every page after it
        data[i] ^= 0x5A
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate_half, garble_pages], ids=["truncated", "garbled"])
def test_a_corrupt_sqlite_file_refuses_the_start_in_one_line(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    built = build_ledger(tmp_path)
    con = sqlite3.connect(built.db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    con.close()
    damage(built.db)
    before = built.db.read_bytes()
    result = run_server(built)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = last_line(result.stderr)
    assert line.startswith("ledger server: refusing to start"), line
    assert built.db.name in line, line
    assert built.db.read_bytes() == before

    checked = run_check("--store", f"sqlite:{built.db}")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stderr, checked.stderr
    assert built.db.name in last_line(checked.stderr)
    assert built.db.read_bytes() == before


# --------------------------------------------------------------------------------------------
# What is not damage, and the clean case


def test_records_written_around_the_server_are_still_skipped(tmp_path: Path) -> None:
    """DESIGN §2.2: a record the ledger never acknowledged, with the chain going on after it
    or at the tail, is skipped; the offline check reports it and passes."""
    built = build_ledger(tmp_path)
    store = SQLiteLogStore(built.db)
    last = decode_log_entry(record_value(built.db, built.size - 1))
    store.append([(b"\x00" * 16, b"not an entry"), (last.body.event_id, last.entry_bytes)])
    store.close()
    checked = run_check("--store", f"sqlite:{built.db}")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{built.size} entries" in checked.stdout, checked.stdout
    assert "2 records skipped" in checked.stdout, checked.stdout


def test_the_offline_check_of_a_clean_store(tmp_path: Path) -> None:
    built = build_ledger(tmp_path, checkpoint_at_end=True)
    before = stored_rows(built.db)
    checked = run_check("--store", f"sqlite:{built.db}")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{built.size} entries" in checked.stdout, checked.stdout
    assert "2 checkpoints" in checked.stdout, checked.stdout
    assert "clean" in checked.stdout, checked.stdout
    assert stored_rows(built.db) == before


def test_the_offline_check_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    checked = run_check("--store", f"sqlite:{tmp_path / 'nowhere.db'}")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "nowhere.db" in last_line(checked.stderr)
    assert not (tmp_path / "nowhere.db").exists()  # a check creates nothing


# --------------------------------------------------------------------------------------------
# The recovery path (docs/RECOVERY.md): restore from an export or a backup, then start


def run_restore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", "store", "restore", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def head_of(db: Path, key: Path) -> tuple[int, bytes, list[int]]:
    """(size, root, checkpoint sizes) the real server serves on `db`."""
    from ledger.client import LedgerClient
    from ledger.keys import PrivateKey
    from ledger.server import LedgerServerConfig, serve

    running = serve(
        LedgerServerConfig(store=db, checkpoint_key=PrivateKey.load(key), checkpoint_every_ms=0)
    )
    try:
        with LedgerClient(running.address) as client:
            head = client.head()
            return head.size, head.root, [c.size for c in client.checkpoints()]
    finally:
        running.stop(None)


@pytest.mark.parametrize("source", ["export", "backup"])
def test_a_damaged_store_is_restored_from_a_good_copy(tmp_path: Path, source: str) -> None:
    from ledger.client import LedgerClient
    from ledger.export import write_export
    from ledger.keys import PrivateKey
    from ledger.server import LedgerServerConfig, serve

    built = build_ledger(tmp_path, checkpoint_at_end=True)
    good = head_of(built.db, built.key)
    copy = tmp_path / ("ledger-export.avro" if source == "export" else "backup.db")
    if source == "export":
        running = serve(
            LedgerServerConfig(
                store=built.db, checkpoint_key=PrivateKey.load(built.key), checkpoint_every_ms=0
            )
        )
        try:
            with LedgerClient(running.address) as client:
                write_export(client, copy, progress=False)
        finally:
            running.stop(None)
    else:
        con = sqlite3.connect(built.db)
        backup = sqlite3.connect(copy)
        con.backup(backup)  # what `sqlite3 ledger.db ".backup backup.db"` does
        backup.close()
        con.close()
    flip_signature_bit(built.db, 4)
    assert run_server(built).returncode == 2

    restored = tmp_path / "restored.db"
    spec = ["--export", str(copy)] if source == "export" else ["--from", f"sqlite:{copy}"]
    result = run_restore(*spec, "--to", f"sqlite:{restored}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"restored {good[0]} entries and 2 checkpoints" in result.stdout, result.stdout
    assert run_check("--store", f"sqlite:{restored}").returncode == 0
    assert head_of(restored, built.key) == good

    # A restore never writes over a file, and never from a damaged copy.
    again = run_restore(*spec, "--to", f"sqlite:{restored}")
    assert again.returncode == 2 and "exists" in last_line(again.stderr)
    damaged = run_restore("--from", f"sqlite:{built.db}", "--to", f"sqlite:{tmp_path / 'x.db'}")
    assert damaged.returncode == 2 and "seq 4:" in last_line(damaged.stderr)
    assert not (tmp_path / "x.db").exists()
