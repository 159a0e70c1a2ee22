"""Real ledger servers for the documented examples: SQLite, or a topic on the fixtures' Kafka.

Each is `python -m ledger.server` started as a process, filled with the demo cast's genesis,
grants and default policy (namespace `models`), so examples that assume "your ledger" find one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ledger.client import LedgerClient
from ledger.export import write_export, write_trust_root
from ledger.formats import SignedEvent
from ledger.scenario import Cast, Flow

REPO = Path(__file__).resolve().parents[2]
LEDGER = "docs"
ORIGIN = "example.org/steward/docs"


@dataclass
class LedgerServer:
    """A running ledger server, its client and the flow that signs the cast's events."""

    address: str
    proc: subprocess.Popen[bytes]
    client: LedgerClient
    flow: Flow
    log: Path
    store_args: tuple[str, ...]
    proposals: list[bytes] = field(default_factory=list)

    def append(self, event: SignedEvent) -> bytes:
        return self.client.append(event).leaf_hash

    def evaluated_proposal(self) -> bytes:
        """A proposal for models/model-server with passing safety and quality evals."""
        proposal = self.append(self.flow.propose())
        self.append(self.flow.eval(proposal, "safety", 0.99))
        self.append(self.flow.eval(proposal, "quality", 0.91))
        self.proposals.append(proposal)
        return proposal

    def checkpoint_now(self) -> None:
        self.client.checkpoint(publish_now=True)

    def export(self, path: Path) -> None:
        self.checkpoint_now()
        write_export(self.client, path, progress=False)

    def trust_root(self, path: Path) -> None:
        write_trust_root(self.client, path)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_ledger(directory: Path, cast: Cast, *store_args: str) -> LedgerServer:
    """A server on `store_args` (default: SQLite in `directory`) with genesis, grants, policy."""
    directory.mkdir(parents=True, exist_ok=True)
    key, port_file, log = directory / "checkpoint.pem", directory / "port", directory / "server.log"
    if not key.exists():
        cast.checkpoint_key.save(key)
    port_file.unlink(missing_ok=True)
    store = store_args or ("--db", str(directory / "ledger.db"))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledger.server",
                *store,
                "--checkpoint-key",
                str(key),
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    deadline = time.monotonic() + 90
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the ledger server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    address = f"127.0.0.1:{int(port_file.read_text())}"
    flow = Flow(cast, ledger=LEDGER, origin=ORIGIN)
    server = LedgerServer(address, proc, LedgerClient(address), flow, log, store)
    server.append(flow.genesis())
    for grant in flow.grants():
        server.append(grant)
    server.append(flow.policy())
    return server


def start_kafka_ledger(directory: Path, cast: Cast, bootstrap: str, topic: str) -> LedgerServer:
    return start_ledger(
        directory,
        cast,
        "--kafka-bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--ledger",
        LEDGER,
        "--replication-factor",
        "1",
        "--min-insync-replicas",
        "1",
    )
