"""The ledger server process keeps its projections and QueryService in step with the log,
also across a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ledger.client import LedgerClient
from ledger.projections import dump, fresh_dump
from ledger.scenario import Cast, Flow
from ledger.store.sqlite import SQLiteLogStore, sqlite_engine
from steward.v1 import query_pb2, query_pb2_grpc


class ServerProcess:
    def __init__(self, workdir: Path, key: Path) -> None:
        self.workdir, self.key = workdir, key
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> str:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.server", "--db", str(self.workdir / "log.db"),
             "--checkpoint-key", str(self.key), "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL, stderr=(self.workdir / "server.log").open("ab"),
        )
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None, (self.workdir / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"
        return self.address

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Flow]]:
    cast = Cast.create()
    key = tmp_path / "checkpoint.pem"
    cast.checkpoint_key.save(key)
    proc = ServerProcess(tmp_path, key)
    proc.start()
    yield proc, Flow(cast)
    proc.stop()


def _wait_projected(address: str, size: int) -> query_pb2.ProjectionStatus:
    stub = query_pb2_grpc.QueryServiceStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + 30
    while True:
        status = stub.GetProjectionStatus(query_pb2.GetProjectionStatusRequest())
        if status.size >= size:
            return status
        assert time.monotonic() < deadline, f"projections stuck at {status.size}, log has {size}"
        time.sleep(0.05)


def test_query_service_follows_appends_and_survives_sigkill(server: tuple[ServerProcess, Flow]) -> None:
    proc, flow = server
    client = LedgerClient(proc.address)
    client.append(flow.genesis())
    for grant in flow.grants():
        client.append(grant)
    client.append(flow.policy())
    proposal = client.append(flow.propose()).leaf_hash
    evals = (client.append(flow.eval(proposal, "safety", 0.99)).leaf_hash,
             client.append(flow.eval(proposal, "quality", 0.9)).leaf_hash)
    client.append(flow.approve(proposal, evals, "alice"))
    size = client.head().size

    _wait_projected(proc.address, size)
    stub = query_pb2_grpc.QueryServiceStub(grpc.insecure_channel(proc.address))
    (listed,) = stub.ListProposals(query_pb2.ListProposalsRequest()).proposals
    assert listed.hash == proposal and listed.proposer == "agent:researcher-7"

    # SIGKILL between appends, append more after the restart: projections equal a fresh fold.
    proc.kill()
    proc.start()
    client = LedgerClient(proc.address)
    client.append(flow.approve(proposal, evals, "bob"))
    client.append(flow.step(proposal, 0, 10, "STARTED"))
    size = client.head().size
    status = _wait_projected(proc.address, size)
    assert status.size == size and status.invalid_records == 0
    proc.stop()
    store = SQLiteLogStore(proc.workdir / "log.db")
    try:
        assert dump(sqlite_engine(proc.workdir / "log.db")) == fresh_dump(store)
    finally:
        store.close()
