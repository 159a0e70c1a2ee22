"""`steward kill engage` and `steward kill release` (`cmd_kill`, which `kubectl steward` runs
too): the kill switch's scope, and the engagement a release binds to."""

from __future__ import annotations

import argparse

from ledger.cli.common import (
    CliError,
    connect,
    deliver,
    fold,
    ledger_name,
    parse_target,
    proposal_hash,
    signing_keys,
)
from ledger.events import new_body, sign
from ledger.formats import KillScope, KillSwitchEngaged, KillSwitchReleased, Payload
from ledger.state import LedgerState


def _scope(args: argparse.Namespace, state: LedgerState | None) -> KillScope:
    chosen = [x for x in (args.all, args.target, args.proposal) if x]
    if len(chosen) != 1:
        raise CliError("choose exactly one scope: --all, --target NS/DEP or --proposal HASH")
    if args.all:
        return KillScope("GLOBAL")
    if args.target:
        ns, dep = parse_target(args.target)
        return KillScope("TARGET", ns, dep)
    if state is None:
        raise CliError("--proposal needs the server to resolve the hash")
    return KillScope("PROPOSAL", proposal=proposal_hash(args.proposal, state))


def cmd_kill(args: argparse.Namespace) -> int:
    client = connect(args)
    # Engaging stays one round trip unless a proposal must be resolved; a release names the
    # engagement it releases, which only the folded log tells.
    releasing = args.action == "release"
    state, _ = fold(client) if args.proposal or releasing else (None, [])
    scope = _scope(args, state)
    ledger = state.ledger if state else ledger_name(args, client)
    payload: Payload = (
        KillSwitchReleased(scope, args.reason)
        if releasing
        else KillSwitchEngaged(scope, args.reason)
    )
    refs: tuple[bytes, ...] = ()
    if releasing and state is not None:
        refs = state.binding_refs(payload)  # none when nothing is engaged: the ledger says so
        if refs:
            print(
                f"binding to the engagement at seq {state.kill_switches[scope]} ({refs[0].hex()[:12]})"
            )
    event = sign(new_body(ledger, payload, refs=refs), *signing_keys(args))
    return deliver(args, event, client)
