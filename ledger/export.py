"""The offline export (docs/DESIGN.md §3.6): everything an auditor needs, in one file.

An Avro object container file whose records are `{seq, entry}` — the exact entry bytes, in seq
order, up to a checkpoint the server signs for the export — with, in the container metadata,
every published checkpoint note up to that size, the ledger's origin, name and vkey, and the
genesis entry again (hex). The auditor needs nothing else but its pinned
root keys. Entries are read through the gRPC client, which checks the chain as it reads.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import grpc

from ledger.client import LedgerRpcError
from ledger.formats import LedgerGenesis, LogEntry, decode_body
from ledger.keys import PublicKey

# Why a server may not sign a checkpoint on demand: the caller may not ask (access control), or
# the server was fenced by a newer writer.
_REFUSED = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
)

_SCHEMA = fastavro.parse_schema(
    json.loads((Path(__file__).parent / "schemas" / "export_record.v1.avsc").read_text())
)


def _records(entries: Iterator[LogEntry], total: int, progress: bool) -> Iterator[dict[str, Any]]:
    for i, e in enumerate(entries, 1):
        if progress and (i % 1000 == 0 or i == total):
            print(f"\rexporting {i:,}/{total:,} entries", end="", file=sys.stderr, flush=True)
        yield {"seq": e.seq, "entry": e.entry_bytes}
    if progress and total:
        print(file=sys.stderr)


def _covering_checkpoint(client: Any, progress: bool) -> int:
    """The size of the log a signed checkpoint covers: the server signs one of its current size
    first (publish_now); a server that refuses leaves the newest one it has."""
    try:
        return int(client.checkpoint(publish_now=True).size)
    except LedgerRpcError as exc:
        if exc.code not in _REFUSED:
            raise
        if progress:
            print(
                f"the server signs no checkpoint now ({exc.code.name}: {exc.message}); exporting up to its "
                "newest checkpoint",
                file=sys.stderr,
            )
    try:
        return int(client.checkpoint().size)
    except LedgerRpcError as exc:
        if exc.code is grpc.StatusCode.NOT_FOUND:
            return 0  # no checkpoint yet: nothing is covered
        raise


def write_export(client: Any, path: Path, *, progress: bool = True) -> int:
    """Write the export atomically (a temp file renamed into place); return the entry count.

    The export holds exactly the entries a signed checkpoint covers, to the newest one: an
    auditor reports entries past every checkpoint (UNCOVERED_TAIL), since nothing the ledger
    signed vouches for them. Entries appended while exporting are left for the next export.
    """
    total = _covering_checkpoint(client, progress)
    head = client.head()
    # Only checkpoints up to the exported size: one published meanwhile would commit to
    # entries the file does not hold.
    checkpoints = [
        {"size": c.size, "note": c.note} for c in client.checkpoints() if c.size <= total
    ]
    genesis = client.genesis()
    metadata = {
        "steward.format": "steward-export/v1",
        "steward.ledger": head.ledger,
        "steward.origin": head.origin,
        "steward.vkey": client.vkey(),
        "steward.genesis": genesis.entry_bytes.hex(),
        "steward.checkpoints": json.dumps(checkpoints),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with tmp.open("wb") as out:

            def counted() -> Iterator[dict[str, Any]]:
                nonlocal count
                for record in _records(
                    client.read(0, limit=total) if total else iter(()), total, progress
                ):
                    count += 1
                    yield record

            fastavro.writer(out, _SCHEMA, counted(), metadata=metadata, codec="deflate")
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def write_trust_root(client: Any, path: Path) -> None:
    """The auditor's trust input: the genesis root keys and the ledger's vkey, as JSON.

    In real use the auditor obtains the root keys out of band and pins them; the demo writes
    the file from the genesis so that the command it prints works.
    """
    genesis = decode_body(client.genesis().entry.body).payload
    assert isinstance(genesis, LedgerGenesis)
    doc = {
        "origin": genesis.origin,
        "vkey": client.vkey(),
        "root_threshold": genesis.root_threshold,
        "roots": [
            {
                "principal": r.principal,
                "public_key_hex": r.public_key.hex(),
                "public_pem": PublicKey(r.public_key).to_pem().decode(),
            }
            for r in genesis.roots
        ],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
