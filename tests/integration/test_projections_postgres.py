"""The projection suite again, with the projections in a real PostgreSQL server.

The log stays in the embedded SQLite store; only the projection tables move, as in production
with an external database. Same test bodies as tests/unit/test_projections.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.unit.test_projections import ProjectionSuite

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
