"""Offline check and restore of a ledger store: ``steward store check`` and ``steward store restore``.

Both verify with :mod:`ledger.integrity`, the same code the ledger server runs on start, so a
store the check passes is one the server starts on, and damage is named the same way. Neither
claims the store as its writer nor changes it: a check of a live Kafka topic never fences
its server, and a SQLite file is opened read-only.

A restore writes a new SQLite store from a good copy of the ledger (an export, a SQLite
backup, the Kafka topic), only once the whole copy verifies, and never over an existing file.
The recovery path is told in docs/RECOVERY.md.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ledger.errors import StewardError, StoreDamagedError, StoreError
from ledger.integrity import ChainCheck, Skip, VerifiedCheckpoint, verify_checkpoints
from ledger.replay_checks import fold_checked_ahead, replay_checker
from ledger.store.base import LogStore

# Progress is reported every this many records.
PROGRESS_EVERY = 50_000
# The skipped records a report lists one by one (the count is always complete).
LISTED_SKIPS = 20

Progress = Callable[[int, int], None]  # (records read, records in the source, 0 if unknown)


class SourceError(StewardError):
    """A source that cannot be used (no such file, not an export, a target that exists)."""


@dataclass
class CheckReport:
    """What a check read and verified."""

    source: str
    records: int = 0
    entries: int = 0
    skipped: int = 0
    listed_skips: list[Skip] = field(default_factory=list)
    checkpoints: list[VerifiedCheckpoint] = field(default_factory=list)
    positions: Sequence[int] = ()  # the store position of each seq

    def lines(self) -> list[str]:
        newest = max((c.size for c in self.checkpoints), default=0)
        out = [
            f"checked {self.source}: {self.records:,} records",
            f"  chain: {self.entries:,} entries (seq 0..{self.entries - 1}), each prev the "
            "leaf hash of the one before, every signature and rule checked"
            if self.entries
            else "  chain: empty",
        ]
        out.append(
            f"  checkpoints: {len(self.checkpoints)} checkpoints verified with the "
            "genesis's checkpoint key, each root recomputed"
            + (
                f"; the newest covers {newest:,} entries, {self.entries - newest:,} come after it"
                if self.checkpoints
                else ""
            )
        )
        if self.skipped:
            out.append(
                f"  {self.skipped} records skipped: not the ledger's own, written around "
                "it (docs/DESIGN.md §2.2); the chain goes on after them"
            )
            for skip in self.listed_skips:
                seq = "" if skip.seq is None else f" seq={skip.seq}"
                out.append(
                    f"    position {skip.position}{seq}: {skip.reason}"
                    f"{' (' + skip.field + ')' if skip.field else ''}: {skip.detail}"
                )
            if self.skipped > len(self.listed_skips):
                out.append(f"    ... and {self.skipped - len(self.listed_skips)} more")
        out.append("clean")
        return out


def _verify(
    records: Iterator[tuple[int, bytes]],
    checkpoints: Callable[[], list[tuple[int, str]]],
    source: str,
    total: int,
    progress: Progress | None,
) -> CheckReport:
    chain = ChainCheck()
    report = CheckReport(source)
    checker = replay_checker()  # as a server's start: libsodium, a chunk ahead of the fold
    try:
        for skip in fold_checked_ahead(chain, records, checker):
            if skip is not None and len(report.listed_skips) < LISTED_SKIPS:
                report.listed_skips.append(skip)
            if progress is not None and chain.records % PROGRESS_EVERY == 0:
                progress(chain.records, total)
    finally:
        if checker is not None:
            checker.close()
    if progress is not None and chain.records >= PROGRESS_EVERY:
        progress(chain.records, total)
    chain.finish()
    report.checkpoints = verify_checkpoints(chain, checkpoints())
    report.records, report.entries, report.skipped = chain.records, chain.size, chain.skipped
    report.positions = chain.positions
    return report


def check_store(store: LogStore, source: str, *, progress: Progress | None = None) -> CheckReport:
    """Verify every record and checkpoint of `store`; StoreDamagedError names the first damage."""
    return _verify(
        ((r.position, r.value) for r in store.read(0)),
        # With the witnesses' cosignatures, as readers are given them: a restored copy keeps
        # them (in its notes, as an export's notes carry them).
        # (Appended as text: a damaged note is integrity's to name, not a parse error here.)
        lambda: [
            (c.size, c.note + "".join(line + "\n" for line in c.cosignatures))
            for c in store.checkpoints()
        ],
        source,
        store.end_position(),
        progress,
    )


# --------------------------------------------------------------------------------------------
# Exports


def _open_export(path: Path) -> tuple[Iterator[tuple[int, bytes]], list[tuple[int, str]]]:
    """The records (seq, entry bytes) and checkpoints of an export file (ledger.export)."""
    import fastavro

    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot read the export {path}: {exc.strerror}") from None
    try:
        reader = fastavro.reader(handle)
        meta = reader.metadata
        if meta.get("steward.format") != "steward-export/v1":
            raise SourceError(
                f"{path.name} is not a Steward export (steward.format is "
                f"{meta.get('steward.format')!r})"
            )
        notes = [
            (int(c["size"]), str(c["note"]))
            for c in json.loads(meta.get("steward.checkpoints", "[]"))
        ]
    except (ValueError, KeyError, TypeError, EOFError) as exc:
        handle.close()
        raise SourceError(f"{path.name} is not a readable Steward export: {exc}") from None
    except BaseException:
        handle.close()
        raise

    def records() -> Iterator[tuple[int, bytes]]:
        try:
            for i, record in enumerate(reader):
                if not isinstance(record, dict) or not isinstance(record.get("entry"), bytes):
                    raise StoreDamagedError(
                        f"the export {path.name} is damaged: record {i} holds no entry"
                    )
                yield i, record["entry"]
        except (ValueError, EOFError, OSError) as exc:
            raise StoreDamagedError(
                f"the export {path.name} is damaged after record "
                f"{i if 'i' in locals() else 0}: {exc}"
            ) from None
        finally:
            handle.close()

    return records(), notes


def check_export(path: Path, *, progress: Progress | None = None) -> CheckReport:
    """Verify an export as the server verifies its store. Every record must be the ledger's:
    an export holds its entries only, so a record that does not extend the chain is damage."""
    records, notes = _open_export(path)
    report = _verify(records, lambda: notes, f"export {path.name}", 0, progress)
    if report.skipped:
        first = report.listed_skips[0]
        raise StoreDamagedError(
            f"the export {path.name} is damaged at record {first.position}: "
            f"{first.reason}: {first.detail}"
        )
    return report


# --------------------------------------------------------------------------------------------
# Restore


def restore_sqlite(
    target: Path,
    *,
    export: Path | None = None,
    store: LogStore | None = None,
    source: str = "",
    progress: Progress | None = None,
) -> CheckReport:
    """Write a new SQLite store at `target` from an export or another store, verified first.

    From a store, only the ledger's chain is copied (records written around it are left
    behind) with every checkpoint that verified. Refuses a target that exists.
    """
    from ledger.store.sqlite import SQLiteLogStore

    if target.exists():
        raise SourceError(f"{target} exists: a restore writes a new file, never over one")
    if (export is None) == (store is None):
        raise SourceError("restore from one source: an export or a store")
    if export is not None:
        report = check_export(export, progress=progress)
        records, _ = _open_export(export)
        keep: Callable[[int], bool] = lambda _position: True  # noqa: E731
    else:
        assert store is not None
        report = check_store(store, source, progress=progress)
        records = ((r.position, r.value) for r in store.read(0))
        chain = set(report.positions)
        keep = chain.__contains__
    tmp = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    out = SQLiteLogStore(tmp)
    try:
        batch: list[tuple[bytes, bytes]] = []
        for position, value in records:
            if not keep(position):
                continue
            batch.append((_event_id(value), value))
            if len(batch) >= 1000:
                out.append(batch)
                batch = []
        if batch:
            out.append(batch)
        for cp in report.checkpoints:
            out.save_checkpoint(cp.size, cp.note)
        copied = check_store(out, f"sqlite:{target.name}")
        if (copied.entries, len(copied.checkpoints)) != (report.entries, len(report.checkpoints)):
            raise StoreError(
                f"the restored copy holds {copied.entries} entries and "
                f"{len(copied.checkpoints)} checkpoints, expected {report.entries} "
                f"and {len(report.checkpoints)}"
            )
    except BaseException:
        out.close()
        for leftover in _sqlite_files(tmp):
            leftover.unlink(missing_ok=True)
        raise
    out.close()
    _settle_wal(tmp)
    tmp.replace(target)
    return report


def _event_id(entry_bytes: bytes) -> bytes:
    """The store key the ledger writes with an entry: its event id (the value verified)."""
    from ledger.formats import decode_log_entry

    return decode_log_entry(entry_bytes).body.event_id


def _sqlite_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _settle_wal(path: Path) -> None:
    """Fold the write-ahead log into the file, so that renaming the file moves everything."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode=DELETE")
    finally:
        con.close()
    for leftover in _sqlite_files(path)[1:]:
        leftover.unlink(missing_ok=True)
