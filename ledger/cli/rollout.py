"""`steward rollout pause` and `steward rollout resume` (`cmd_rollout`, which `kubectl
steward pause|resume` runs too), and the check behind `kubectl steward retry`.

A pause is one approver's or operator's signature; the controller then holds the rollout at
its step and weight. A resume names the pause it ends (refs) and carries the signatures of as
many distinct approvers as the policy's ``resume_approvals``: given all at once with several
``--key``, or collected as a kill-switch release is, with ``--out FILE``, ``steward sign FILE``
and ``steward submit FILE``. The ledger judges both; what is printed here only says what the
event is bound to and what it will take.
"""

from __future__ import annotations

import argparse

from ledger.cli.common import connect, deliver, fold, proposal_hash, signing_keys
from ledger.events import new_body, sign
from ledger.formats import RolloutPaused, RolloutResumed
from ledger.keys import PrivateKey
from ledger.state import LedgerState, ProposalState


def cmd_rollout(args: argparse.Namespace) -> int:
    client = connect(args)
    state, _ = fold(client)
    proposal = state.proposals[proposal_hash(args.proposal, state)]
    keys = signing_keys(args)
    if args.action == "pause":
        payload: RolloutPaused | RolloutResumed = RolloutPaused(proposal.entry_hash, args.reason)
        print(
            f"pausing the rollout of {proposal.entry_hash.hex()[:12]} "
            f"({proposal.proposal.target.namespace}/{proposal.proposal.target.deployment}, "
            f"{proposal.phase.lower()}"
            + (f" at step {proposal.current.step}" if proposal.current else "")
            + ")"
        )
    else:
        payload = RolloutResumed(proposal.entry_hash, args.reason)
        _explain_resume(state, proposal, keys, bool(getattr(args, "out", None)))
    refs = state.binding_refs(payload)
    event = sign(new_body(state.ledger, payload, refs=refs), *keys)
    return deliver(args, event, client)


def _explain_resume(
    state: LedgerState, proposal: ProposalState, keys: list[PrivateKey], to_file: bool
) -> None:
    """Say which pause the resume ends and how many of its approvers these keys are."""
    pause = proposal.pause
    if pause is None:
        print(f"the rollout is {proposal.phase.lower()} and not paused: the ledger will refuse")
        return
    print(
        f"binding to the pause at seq {pause.seq} by {pause.author} ({pause.entry_hash.hex()[:12]})"
    )
    policy = state.policy_of(proposal)
    counted = sorted(
        {
            info.principal
            for info in (state.keys.get(k.key_id) for k in keys)
            if info is not None
            and "approver" in info.roles
            and info.principal != proposal.proposer
            and info.kind in policy.approver_kinds
        }
    )
    need = policy.resume_approvals
    print(
        f"policy {policy.policy_id}: a resume needs {need} distinct approver(s) of kind "
        f"{' or '.join(policy.approver_kinds)}, never the proposer; these keys give {len(counted)}"
        + (f" ({', '.join(counted)})" if counted else "")
    )
    if len(counted) < need and not to_file:
        print(
            "too few for the ledger to accept: collect the others with --out FILE, "
            "then `steward sign FILE --key ...` by each approver and `steward submit FILE`"
        )


def retry_problem(state: LedgerState, proposal: ProposalState) -> str | None:
    """Why `kubectl steward retry` does not apply to `proposal`, or None: a retry is a fresh
    approval of a rolled-back rollout (the rules count no decision made before its rollback)."""
    if proposal.phase == "ROLLED_BACK":
        return None
    if proposal.phase == "PENDING":
        return (
            "it has not rolled out yet (PENDING): retry re-approves a rolled-back rollout; "
            "use approve"
        )
    return f"it is {proposal.phase}, not rolled back: retry re-approves a rolled-back rollout" + (
        " (a paused one goes on with resume)" if proposal.pause is not None else ""
    )


__all__ = ["cmd_rollout", "retry_problem"]
