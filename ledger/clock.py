"""The wall clock in the unit the ledger records: milliseconds since the epoch.

One definition for every place that stamps or compares ledger times (event bodies, the
writer's received_at, the controller's planner clock), so they cannot drift apart in unit.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
