"""Short governance stories that several tests tell against a real ledger, through any append."""

from __future__ import annotations

from collections.abc import Callable

from ledger.formats import SignedEvent
from ledger.scenario import Flow


def canary_started(append: Callable[[SignedEvent], bytes], flow: Flow) -> bytes:
    """Genesis, grants, policy, an agent's proposal with both evals passing, alice's and bob's
    approvals, and its first canary step STARTED: 16 entries. Returns the proposal's hash."""
    append(flow.genesis())
    for grant in flow.grants():
        append(grant)
    append(flow.policy())
    proposal = append(flow.propose())
    evals = (
        append(flow.eval(proposal, "safety", 0.99)),
        append(flow.eval(proposal, "quality", 0.91)),
    )
    append(flow.approve(proposal, evals, "alice"))
    append(flow.approve(proposal, evals, "bob"))
    append(flow.step(proposal, 0, 10, "STARTED"))
    return proposal
