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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fastavro
import grpc

from ledger.client import LedgerRpcError
from ledger.cosignature import WitnessKey
from ledger.errors import ConfigError, StewardError
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


def _await_cosignatures(client: Any, size: int, wanted: int, wait_s: float) -> None:
    """Wait until the checkpoint of `size` carries `wanted` signature lines besides the
    ledger's (the witnesses cosign it within moments of its publication, docs/WITNESS.md)."""
    deadline = time.monotonic() + wait_s
    while True:
        lines = client.checkpoint(size).note.split("\n\n")[-1].count("\n")
        if lines - 1 >= wanted:
            return
        if time.monotonic() >= deadline:
            raise StewardError(
                f"the checkpoint of size {size} carries {lines - 1} witness cosignatures after "
                f"{wait_s:g} s, fewer than the {wanted} asked for"
            )
        time.sleep(0.1)


def write_export(
    client: Any,
    path: Path,
    *,
    progress: bool = True,
    cosignatures: int = 0,
    cosignature_wait_s: float = 30.0,
) -> int:
    """Write the export atomically (a temp file renamed into place); return the entry count.

    The export holds exactly the entries a signed checkpoint covers, to the newest one: an
    auditor reports entries past every checkpoint (UNCOVERED_TAIL), since nothing the ledger
    signed vouches for them. Entries appended while exporting are left for the next export.
    With `cosignatures`, the covering checkpoint is exported once it carries that many witness
    cosignatures (an auditor whose trust root names witnesses relies on them).
    """
    total = _covering_checkpoint(client, progress)
    if cosignatures and total:
        _await_cosignatures(client, total, cosignatures, cosignature_wait_s)
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


TRUST_ROOT_VERSION = 2  # audit/trust.py reads it; version 2 names witnesses


def write_trust_root(
    client: Any,
    path: Path,
    *,
    witnesses: Sequence[str] = (),
    witness_threshold: int | None = None,
) -> None:
    """The auditor's trust input: the genesis root keys, the ledger's vkey, and the witnesses
    (their cosigner vkeys) whose cosignatures a checkpoint needs, `witness_threshold` of them
    (default: all), as JSON.

    In real use the auditor obtains the root keys out of band and pins them; the demo writes
    the file from the genesis so that the command it prints works.
    """
    keys = [WitnessKey.parse(v) for v in witnesses]
    if len({k.vkey for k in keys}) != len(keys):
        raise ConfigError("a witness is named twice")
    threshold = len(keys) if witness_threshold is None else witness_threshold
    if not 0 <= threshold <= len(keys):
        raise ConfigError(f"witness threshold {threshold}: expected 0..{len(keys)}")
    genesis = decode_body(client.genesis().entry.body).payload
    assert isinstance(genesis, LedgerGenesis)
    doc = {
        "version": TRUST_ROOT_VERSION,
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
        "witnesses": [{"name": k.name, "vkey": k.vkey} for k in keys],
        "witness_threshold": threshold,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
