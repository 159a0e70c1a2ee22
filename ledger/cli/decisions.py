"""A proposal's life before its rollout: `steward propose`, `eval`, and `approve`/`reject`
(`cmd_decide`, which `kubectl steward` runs too)."""

from __future__ import annotations

import argparse

from ledger.cli.common import (
    CliError,
    connect,
    deliver,
    emit,
    fold,
    parse_target,
    proposal_hash,
    signing_keys,
)
from ledger.cli.health import parse_metrics
from ledger.events import new_body, sign
from ledger.formats import (
    ApprovalRecorded,
    EvalRecorded,
    ModelRef,
    ProposalOrigin,
    ProposalSubmitted,
    Target,
)


def cmd_propose(args: argparse.Namespace) -> int:
    ns, dep = parse_target(args.target)
    payload = ProposalSubmitted(
        target=Target(ns, dep),
        candidate=ModelRef(args.image, args.digest),
        baseline=ModelRef(args.baseline_image, args.baseline_digest),
        rationale=args.rationale,
        origin=ProposalOrigin(args.agent, args.run),
    )
    return emit(args, payload)


def cmd_eval(args: argparse.Namespace) -> int:
    client = connect(args)
    state, _ = fold(client)
    proposal = proposal_hash(args.proposal, state)
    payload = EvalRecorded(proposal, args.suite, parse_metrics(args.metric), args.artifact)
    event = sign(new_body(state.ledger, payload), *signing_keys(args))
    return deliver(args, event, client)


def cmd_decide(args: argparse.Namespace, decision: str) -> int:
    client = connect(args)
    state, _ = fold(client)
    proposal = state.proposals[proposal_hash(args.proposal, state)]
    required = sorted({r.suite for r in state.policy_of(proposal).required_evals})
    evals = tuple(
        proposal.latest_evals[s].entry_hash for s in required if s in proposal.latest_evals
    )
    if decision == "APPROVE":
        missing = [s for s in required if s not in proposal.latest_evals]
        if missing:
            raise CliError(f"cannot approve yet: no eval recorded for {', '.join(missing)}")
        for s in required:
            info = proposal.latest_evals[s]
            print(
                f"binding to the latest {s} eval {info.entry_hash.hex()[:12]} ({'pass' if info.passed else 'FAIL'})"
            )
    payload = ApprovalRecorded(proposal.entry_hash, decision, evals, args.comment)
    rollback = proposal.latest_rollback
    if rollback is not None:
        print(
            f"binding to the latest rollback at seq {rollback.seq} ({rollback.entry_hash.hex()[:12]})"
        )
    event = sign(
        new_body(state.ledger, payload, refs=state.binding_refs(payload)), *signing_keys(args)
    )
    return deliver(args, event, client)
