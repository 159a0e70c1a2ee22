"""The ledger server process keeps its projections and QueryService in step with the log,
also across a SIGKILL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from infra.processes import wait_for
from ledger.client import LedgerClient
from ledger.projections import dump, fresh_dump
from ledger.scenario import Cast, Flow
from ledger.store.sqlite import SQLiteLogStore, sqlite_engine
from steward.v1 import query_pb2, query_pb2_grpc
from tests.helpers.keys import write_checkpoint_key
from tests.helpers.ledger_server import LedgerServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[LedgerServerProcess, Flow]]:
    cast = Cast.create()
    key = write_checkpoint_key(cast, tmp_path)
    proc = LedgerServerProcess(
        ["-m", "ledger.server", "--db", str(tmp_path / "log.db"), "--checkpoint-key", str(key)],
        tmp_path,
    )
    proc.start()
    yield proc, Flow(cast)
    proc.stop()


def _wait_projected(address: str, size: int) -> query_pb2.ProjectionStatus:
    stub = query_pb2_grpc.QueryServiceStub(grpc.insecure_channel(address))

    def projected() -> query_pb2.ProjectionStatus | None:
        status = stub.GetProjectionStatus(query_pb2.GetProjectionStatusRequest())
        return status if status.size >= size else None

    return wait_for(f"the projections to reach the log's size {size}", projected, 30, every=0.05)


def test_query_service_follows_appends_and_survives_sigkill(
    server: tuple[LedgerServerProcess, Flow],
) -> None:
    proc, flow = server
    client = LedgerClient(proc.address)
    client.append(flow.genesis())
    for grant in flow.grants():
        client.append(grant)
    client.append(flow.policy())
    proposal = client.append(flow.propose()).leaf_hash
    evals = (
        client.append(flow.eval(proposal, "safety", 0.99)).leaf_hash,
        client.append(flow.eval(proposal, "quality", 0.9)).leaf_hash,
    )
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
