"""`steward health report`: a health report judged by hand, bound to the run of its step."""

from __future__ import annotations

import argparse

from ledger.analysis import checks_for_step
from ledger.cli.common import CliError, connect, deliver, fold, proposal_hash, signing_keys
from ledger.events import new_body, sign
from ledger.formats import HealthReported, Metric


def parse_metrics(specs: list[str]) -> tuple[Metric, ...]:
    """NAME=NUMBER flags as metrics sorted by name (the rules refuse any other order)."""
    metrics: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise CliError(f"--metric {spec!r}: expected NAME=NUMBER")
        try:
            metrics[name] = float(value)
        except ValueError as exc:
            raise CliError(f"--metric {spec!r}: expected NAME=NUMBER") from exc
    return tuple(Metric(k, metrics[k]) for k in sorted(metrics))


def cmd_health_report(args: argparse.Namespace) -> int:
    client = connect(args)
    state, _ = fold(client)
    proposal = state.proposals[proposal_hash(args.proposal, state)]
    policy = state.policy_of(proposal)
    if not 0 <= args.step < len(policy.plan):
        raise CliError(f"--step {args.step}: the plan has steps 0..{len(policy.plan) - 1}")
    payload = HealthReported(
        proposal.entry_hash, args.step, args.healthy, parse_metrics(args.metric or [])
    )
    refs = state.binding_refs(payload)
    run = proposal.current_run
    if refs and run is not None:
        print(f"binding to the run of step {args.step} begun at seq {run.seq}")
    else:
        print(f"step {args.step} is not running: this report can open no gate")
    checks = checks_for_step(policy, args.step)
    if checks:
        names = ", ".join(c.name for c in checks)
        print(
            f"step {args.step} is gated by checks ({names}): a report by hand does not open it"
            + ("; an unhealthy one stops the canary" if not args.healthy else "")
        )
    event = sign(new_body(state.ledger, payload, refs=refs), *signing_keys(args))
    return deliver(args, event, client)
