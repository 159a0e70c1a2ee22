"""The SQLite backend against the shared store contract."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.store.base import LogStore
from ledger.store.sqlite import SQLiteLogStore
from tests.contract.store_contract import StoreContract


@pytest.fixture
def store_factory(tmp_path: Path) -> Callable[..., LogStore]:
    counter = iter(range(1000))

    def make(reopen: SQLiteLogStore | None = None) -> LogStore:
        if reopen is not None:
            reopen.close()
            return SQLiteLogStore(reopen.path)
        return SQLiteLogStore(tmp_path / f"log-{next(counter)}.db")

    return make


class TestSQLiteStore(StoreContract):
    pass
