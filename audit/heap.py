"""Python's cyclic garbage collector during a steward-audit run.

An audit keeps a few objects per entry to the end (leaf hashes, the rules' state, timeline
events), so nearly every container it allocates survives, and with the default thresholds
(700, 10, 10) the collector scans each of them again in every generation. At a million
entries that cost the single process 16% of its rate and two workers a third of theirs
(2026-12-07, one run each of `audit.verify.verify` over the cached 1,000,000-event ledger):

| thresholds | 1 process | 2 workers |
|---|---|---|
| 700 / 10 / 10 (default) | 16,440 ev/s | 23,955 ev/s |
| 50,000 / 20 / 100 | 19,544-19,767 ev/s | 36,388-36,876 ev/s |
| 50,000 / 2 / 10, survivors of each full collection frozen (as the ledger does) | 19,413 ev/s | 29,531 ev/s |

The auditor's own module (it imports nothing from the ledger). The setting is process-wide,
so only the process entry point applies it (audit.cli); `audit.verify.verify`, a library
call, leaves the caller's collector alone. The thresholds are restored on the way out.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

AUDIT_THRESHOLDS = (50_000, 20, 100)


@contextmanager
def audit_collector() -> Iterator[None]:
    """Rare young and middle collections for the length of the block."""
    before = gc.get_threshold()
    gc.set_threshold(*AUDIT_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
