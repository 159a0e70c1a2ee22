"""`steward store check` and `steward store restore`: a ledger store verified or rebuilt
offline, opened read-only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ledger.cli.common import CliError
from ledger.errors import StewardError


def _open_store(spec: str, flag: str, args: argparse.Namespace) -> tuple[Any, str]:
    """A store to read, never to write: `sqlite:PATH` (opened read-only, never created) or
    `kafka:BOOTSTRAP/TOPIC` (not claimed: a running server is not disturbed), with the
    ``--kafka-*`` security flags of `args` (the reader's ACLs are enough)."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite" and rest:
        from ledger.store.sqlite import SQLiteLogStore

        path = Path(rest)
        if not path.is_file():
            raise CliError(f"{flag} {spec}: no such file")
        return SQLiteLogStore(path, read_only=True), f"sqlite:{path.name}"
    if kind == "kafka" and "/" in rest:
        from ledger.store.kafka import KafkaLogStore, KafkaStoreConfig
        from ledger.store.kafka_flags import security_from_args

        bootstrap, topic = rest.rsplit("/", 1)
        config = KafkaStoreConfig(
            bootstrap_servers=bootstrap,
            topic=topic,
            create_topics=False,
            client_id="steward-store-check",
            **security_from_args(args),
        )
        return KafkaLogStore(config), f"kafka:{topic}"
    raise CliError(f"{flag} {spec!r}: expected sqlite:PATH or kafka:BOOTSTRAP/TOPIC")


def _progress(done: int, total: int) -> None:
    of = f" of {total:,} positions" if total else ""
    print(f"  ... {done:,} records read{of}", file=sys.stderr, flush=True)


def cmd_store_check(args: argparse.Namespace) -> int:
    from ledger.recovery import check_export, check_store

    try:
        if args.export:
            report = check_export(Path(args.export), progress=_progress)
        else:
            store, name = _open_store(args.store, "--store", args)
            try:
                report = check_store(store, name, progress=_progress)
            finally:
                store.close()
    except StewardError as exc:  # damage, or a store that cannot be read: one line, exit 2
        print(f"steward: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0


def cmd_store_restore(args: argparse.Namespace) -> int:
    from ledger.recovery import restore_sqlite

    kind, _, target = args.to.partition(":")
    if kind != "sqlite" or not target:
        raise CliError(f"--to {args.to!r}: expected sqlite:PATH (a new file)")
    try:
        if args.export:
            report = restore_sqlite(Path(target), export=Path(args.export), progress=_progress)
        else:
            store, name = _open_store(args.source, "--from", args)
            try:
                report = restore_sqlite(Path(target), store=store, source=name, progress=_progress)
            finally:
                store.close()
    except StewardError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()[:-1]))
    print(
        f"restored {report.entries:,} entries and {len(report.checkpoints)} checkpoints "
        f"to {target}; start the server on it with --db {target}"
    )
    return 0
