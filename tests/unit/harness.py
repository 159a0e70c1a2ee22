"""An in-memory ledger with a fake clock for the rule tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ledger.core import LedgerCore, Receipt
from ledger.formats import SignedEvent
from ledger.rules import RuleViolationError
from ledger.scenario import Cast, Flow
from ledger.spilled_index import ScratchIndexes

# Every violation code a test has observed; a meta-test checks that each code is covered.
OBSERVED_CODES: set[str] = set()


@dataclass
class Harness:
    cast: Cast = field(default_factory=lambda: Cast.create(seed="rules"))
    now: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    core: LedgerCore = field(default_factory=lambda: LedgerCore(keep_entries=True))

    @classmethod
    def on(cls, state: str) -> Harness:
        """A harness on the in-memory state ("in-memory") or a server's ("spilled")."""
        if state == "in-memory":
            return cls()
        if state == "spilled":
            # Everything tiny: lookups go to the tables, past a filter of many layers.
            scratch = ScratchIndexes(
                cache_kib=64, flush_at=1, hot_objects=1, found_keys=1, first_filter_keys=4
            )
            return cls(core=LedgerCore(keep_entries=True, scratch=scratch))
        raise ValueError(f"state {state!r}, expected in-memory or spilled")

    def __post_init__(self) -> None:
        self.flow = Flow(self.cast, clock=lambda: self.now, state=lambda: self.core.state)

    def tick(self, ms: int = 1000) -> int:
        self.now += ms
        return self.now

    def ok(self, event: SignedEvent) -> bytes:
        receipt: Receipt = self.core.append(event, self.tick)
        assert not receipt.duplicate
        return receipt.leaf_hash

    def refused(self, event: SignedEvent, code: str) -> RuleViolationError:
        size, root = self.core.size, self.core.tree.root()
        with pytest.raises(RuleViolationError) as info:
            self.core.append(event, self.tick)
        assert info.value.violation.code == code, str(info.value)
        assert (self.core.size, self.core.tree.root()) == (size, root), (
            "a refused event changed the ledger"
        )
        OBSERVED_CODES.add(code)
        return info.value

    # -- common prefixes -----------------------------------------------------------------

    def base(self, **policy: object) -> None:
        """Genesis, every grant and a policy."""
        self.ok(self.flow.genesis())
        for grant in self.flow.grants():
            self.ok(grant)
        self.ok(self.flow.policy(**policy))  # type: ignore[arg-type]

    def proposal(self, **policy: object) -> bytes:
        self.base(**policy)
        return self.ok(self.flow.propose())

    def evaluated(self, **policy: object) -> tuple[bytes, tuple[bytes, bytes]]:
        p = self.proposal(**policy)
        evals = (
            self.ok(self.flow.eval(p, "safety", 0.99)),
            self.ok(self.flow.eval(p, "quality", 0.91)),
        )
        return p, evals

    def approved(self, **policy: object) -> tuple[bytes, tuple[bytes, bytes]]:
        p, evals = self.evaluated(**policy)
        self.ok(self.flow.approve(p, evals, "alice"))
        self.ok(self.flow.approve(p, evals, "bob"))
        return p, evals
