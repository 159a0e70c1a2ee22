"""The root actions: `steward ledger init` (the genesis), `grant`, `revoke` and `policy set`
(with the policy YAML reader, `load_policy`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ledger.cli.common import (
    CliError,
    deliver,
    emit,
    load_public,
    parse_time,
    principal_for,
    signing_keys,
)
from ledger.events import new_body, sign
from ledger.formats import (
    HealthCheck,
    KeyGranted,
    KeyRevoked,
    LedgerGenesis,
    NoDataRule,
    PlanStep,
    PolicySet,
    RequiredEval,
    RootKey,
    TargetSelector,
    TrafficRouting,
)


def cmd_init(args: argparse.Namespace) -> int:
    roots = []
    for spec in args.root:
        given, sep, pem = spec.partition("=")
        if not sep:
            given, pem = "", spec
        principal = principal_for(given, pem, f"--root PRINCIPAL={pem}")
        roots.append(RootKey(principal, load_public(pem).raw))
    checkpoint = load_public(args.checkpoint_public)
    payload = LedgerGenesis(
        origin=args.origin,
        roots=tuple(roots),
        root_threshold=args.threshold,
        checkpoint_key_name=args.checkpoint_name or args.origin,
        checkpoint_public_key=checkpoint.raw,
    )
    event = sign(new_body(args.name, payload), *signing_keys(args))
    return deliver(args, event)


def cmd_grant(args: argparse.Namespace) -> int:
    expires = parse_time(args.expires, "--expires") if args.expires else None
    principal = principal_for(args.principal, args.public_key, "--principal")
    payload = KeyGranted(principal, load_public(args.public_key).raw, tuple(args.role), expires)
    return emit(args, payload)


def cmd_revoke(args: argparse.Namespace) -> int:
    try:
        key_id = bytes.fromhex(args.key_id)
    except ValueError as exc:
        raise CliError(f"--key-id {args.key_id!r}: expected 64 hex digits") from exc
    if len(key_id) != 32:
        raise CliError(f"--key-id: expected 64 hex digits, observed {len(args.key_id)}")
    return emit(args, KeyRevoked(key_id, args.reason))


def load_policy(path: Path) -> PolicySet:
    """A PolicySet from YAML; errors name the field."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read policy {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CliError(f"{path}: expected a mapping at the top level")

    def need(mapping: dict[str, Any], key: str, where: str) -> Any:
        if key not in mapping:
            raise CliError(f"{path}: {where}{key} is required")
        return mapping[key]

    try:
        selector = need(doc, "selector", "")
        plan = [
            PlanStep(
                int(need(s, "weight", f"plan[{i}].")),
                int(s.get("hold_seconds", 0)),
                bool(s.get("health_gate", False)),
            )
            for i, s in enumerate(need(doc, "plan", ""))
        ]
        evals = [
            RequiredEval(
                str(need(r, "suite", f"required_evals[{i}].")),
                str(need(r, "metric", f"required_evals[{i}].")),
                str(r.get("op", "GE")).upper(),
                float(need(r, "threshold", f"required_evals[{i}].")),
            )
            for i, r in enumerate(doc.get("required_evals", []))
        ]
        analysis = []
        for i, c in enumerate(doc.get("analysis", [])):
            where = f"analysis[{i}]."
            no_data = c.get("no_data", {})
            count = int(c.get("count", 3))
            interval = int(c.get("interval_seconds", 60))
            steps = c.get("steps")
            analysis.append(
                HealthCheck(
                    name=str(need(c, "name", where)),
                    query=str(need(c, "query", where)),
                    op=str(need(c, "op", where)).upper(),
                    threshold=float(need(c, "threshold", where)),
                    interval_seconds=interval,
                    count=count,
                    failure_limit=int(c.get("failure_limit", 1)),
                    steps=None if steps is None else tuple(int(x) for x in steps),
                    no_data=NoDataRule(
                        # By default a check gets twice the time its measurements take.
                        int(no_data.get("deadline_seconds", 2 * count * interval)),
                        str(no_data.get("action", "ROLLBACK")).upper(),
                    ),
                )
            )
        traffic = doc.get("traffic")
        if traffic is not None and not isinstance(traffic, dict):
            raise CliError(
                f"{path}: traffic: expected a mapping of http_route, stable_service, "
                f"canary_service and port, observed {type(traffic).__name__}"
            )
        notify = doc.get("notify", [])
        if not isinstance(notify, list):
            raise CliError(
                f"{path}: notify: expected a list of webhook URLs, observed {type(notify).__name__}"
            )
        grace = doc.get("readiness_grace_seconds")
        container = doc.get("container")
        approvals = doc.get("approvals", {})
        kill = doc.get("kill_switch", {})
        return PolicySet(
            policy_id=str(need(doc, "id", "")),
            selector=TargetSelector(
                str(need(selector, "namespace", "selector.")), str(selector.get("deployment", "*"))
            ),
            required_evals=tuple(evals),
            approvals_required=int(approvals.get("required", 2)),
            approver_kinds=tuple(approvals.get("kinds", ["human"])),
            plan=tuple(plan),
            veto_on_reject=bool(approvals.get("veto_on_reject", True)),
            kill_release_approvals=int(kill.get("release_approvals", 2)),
            resume_approvals=int(doc.get("resume_approvals", 1)),
            kill_rollback_bound_ms=int(kill.get("rollback_bound_ms", 5000)),
            analysis=tuple(analysis),
            container=None if container is None else str(container),
            readiness_grace_seconds=None if grace is None else int(grace),
            traffic=None
            if traffic is None
            else TrafficRouting(
                http_route=str(need(traffic, "http_route", "traffic.")),
                stable_service=str(need(traffic, "stable_service", "traffic.")),
                canary_service=str(need(traffic, "canary_service", "traffic.")),
                port=int(need(traffic, "port", "traffic.")),
            ),
            notify=tuple(str(url) for url in notify),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise CliError(f"{path}: {exc}") from exc


def cmd_policy_set(args: argparse.Namespace) -> int:
    return emit(args, load_policy(Path(args.file)))
