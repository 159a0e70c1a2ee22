"""The projection suite again, with the projections in a real PostgreSQL server.

The log stays in the embedded SQLite store; only the projection tables move, as in production
with an external database. Same test bodies as tests/unit/test_projections.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

from ledger.projections import Projector
from ledger.store.sqlite import SQLiteLogStore
from steward.v1 import common_pb2, query_pb2
from tests.helpers.query_server import query_service
from tests.unit.test_projections import ProjectionSuite, records, story

pytestmark = pytest.mark.postgres


class TestProjectionsPostgres(ProjectionSuite):
    @pytest.fixture
    def engine(self, postgres_url: str) -> Iterator[sa.Engine]:
        engine = sa.create_engine(postgres_url)
        yield engine
        engine.dispose()

    def test_runs_on_postgresql(self, engine: sa.Engine) -> None:
        assert engine.dialect.name == "postgresql"
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "on"

    def test_query_service_reads_postgresql(self, engine: sa.Engine, store: SQLiteLogStore) -> None:
        """The servicer's REPEATABLE READ, read-only snapshot path, through a real gRPC server."""
        st = story()
        store.append(records(st.entries))
        Projector(store, engine).catch_up()
        with query_service(engine) as stub:
            got = stub.GetProposal(query_pb2.GetProposalRequest(hash=st.h["p1"]), timeout=10)
            assert got.proposal.phase == "PROMOTED" and len(got.steps) == 4
            assert got.projection.size == len(st.entries)
            keys: list[query_pb2.GrantedKey] = []
            token = ""
            while True:
                response = stub.ListKeys(
                    query_pb2.ListKeysRequest(
                        include_revoked=True,
                        page=common_pb2.PageRequest(page_size=2, page_token=token),
                    ),
                    timeout=10,
                )
                keys.extend(response.keys)
                token = response.page.next_page_token
                if not token:
                    break
            assert len(keys) == len({k.key_id for k in keys}) == 11
            with pytest.raises(grpc.RpcError) as info:
                stub.GetProposal(query_pb2.GetProposalRequest(hash=bytes(32)), timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
