"""``kubectl steward``'s commands: each one reads through a :class:`Tool` and prints.

Signing commands (approve, reject, kill, release, pause, resume, abort, retry) run the
``steward`` CLI's own code paths (``ledger.cli.decisions.cmd_decide``,
``ledger.cli.kill.cmd_kill``, ``ledger.cli.rollout.cmd_rollout``) with the user's key file:
the key never leaves the machine and the ledger checks every rule again. ``verify`` runs the independent
``steward-audit``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.kubectl.render import history_lines, render_get, render_list
from controller.kubectl.rows import DONE_BAD, DONE_OK, RolloutInfo
from controller.kubectl.sources import Tool, from_message
from ledger.cli.common import CliError


def _now() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


def cmd_get(tool: Tool) -> int:
    info = tool.resolve(tool.args.rollout)
    deadline = time.monotonic() + tool.args.timeout if tool.args.timeout else None
    tty = sys.stdout.isatty()
    last = ""
    while True:
        info, cluster = tool.cluster(info)
        frame = render_get(info, cluster, _now())
        if not tool.args.watch:
            print(frame)
            return 0
        if frame != last:
            # Redraw in place on a terminal; a pipe gets one frame after another.
            print(("\x1b[H\x1b[2J" if tty else "\n") + frame, flush=True)
            last = frame
        if deadline is not None and time.monotonic() >= deadline:
            return 0
        time.sleep(tool.args.interval)
        info = tool.refresh(info)


def cmd_list(tool: Tool) -> int:
    all_ns = tool.args.all_namespaces or (not tool.args.namespace and tool.kube() is None)
    rollouts = tool.rollouts(None if all_ns else tool.namespace())
    if not rollouts:
        where = "any namespace" if all_ns else f"namespace {tool.namespace()}"
        print(f"No rollouts found in {where}.", file=sys.stderr)
        return 0
    print(render_list(rollouts, all_namespaces=all_ns))
    return 0


def _watch_controller(tool: Tool, info: RolloutInfo, timeout: float) -> Iterator[RolloutInfo]:
    import grpc

    from steward.v1 import controller_pb2

    request = controller_pb2.WatchRolloutsRequest(proposal=bytes.fromhex(info.proposal))
    try:
        for m in tool.stub().WatchRollouts(request, timeout=timeout):
            yield from_message(m)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise CliError(
                f"ControllerService at {tool.controller}: WatchRollouts failed: "
                f"{err.code().name}: {err.details()}"
            ) from err  # type: ignore[attr-defined]


def _poll(tool: Tool, info: RolloutInfo, deadline: float) -> Iterator[RolloutInfo]:
    yield info
    while time.monotonic() < deadline:
        time.sleep(min(tool.args.interval, max(0.0, deadline - time.monotonic())))
        yield tool.refresh(info)


def cmd_status(tool: Tool) -> int:
    info = tool.resolve(tool.args.rollout)
    deadline = time.monotonic() + tool.args.timeout
    updates = (
        _watch_controller(tool, info, tool.args.timeout)
        if tool.controller
        else _poll(tool, info, deadline)
    )
    shown = None
    for r in updates:
        line = f"{r.name}: {r.phase}, step {r.step}, weight {r.weight}%" + (
            f" — {r.message}" if r.message else ""
        )
        if line != shown:
            print(line, flush=True)
            shown = line
        if r.phase in DONE_OK:
            return 0
        if r.phase in DONE_BAD:
            return 1
        if time.monotonic() >= deadline:
            break
    print(
        f"{info.name}: still {shown and shown.split(': ', 1)[1]} after {tool.args.timeout:g}s",
        file=sys.stderr,
    )
    return 2


def cmd_history(tool: Tool) -> int:
    info = tool.resolve(tool.args.rollout)
    fold = tool.fold()
    for line in history_lines(
        fold.entries, bytes.fromhex(info.proposal), info.namespace, info.deployment
    ):
        print(line)
    return 0


def _cli_args(tool: Tool, **extra: Any) -> argparse.Namespace:
    """The namespace ledger.cli's commands read, built from this tool's flags."""
    a = tool.args
    if not tool.server:
        raise CliError(
            "signing commands submit to the ledger: pass --server HOST:PORT or set STEWARD_SERVER"
        )
    return argparse.Namespace(
        server=tool.server,
        tls_ca=a.tls_ca,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        timeout=a.request_timeout,
        passphrase_env=a.passphrase_env,
        **{"key": a.key, "out": getattr(a, "out", None), "ledger_name": None, **extra},
    )


def cmd_decide(tool: Tool, decision: str) -> int:
    from ledger.cli.decisions import cmd_decide as steward_decide

    info = tool.resolve(tool.args.rollout)
    print(f"{decision.lower()} {info.name} (proposal {info.proposal[:12]}, {info.candidate_image})")
    return steward_decide(
        _cli_args(tool, proposal=info.proposal, comment=tool.args.comment), decision
    )


def cmd_kill(tool: Tool, action: str) -> int:
    from ledger.cli.kill import cmd_kill as steward_kill

    a = tool.args
    proposal = tool.resolve(a.rollout).proposal if a.rollout else None
    reason = a.reason or ("released" if action == "release" else "")
    return steward_kill(
        _cli_args(tool, action=action, all=a.all, target=a.target, proposal=proposal, reason=reason)
    )


def cmd_pause_resume(tool: Tool, action: str) -> int:
    from ledger.cli.rollout import cmd_rollout

    a = tool.args
    info = tool.resolve(a.rollout)
    reason = a.reason or "resumed"
    print(f"{action} {info.name} (proposal {info.proposal[:12]}, {info.candidate_image})")
    return cmd_rollout(_cli_args(tool, action=action, proposal=info.proposal, reason=reason))


def cmd_abort(tool: Tool) -> int:
    """Argo's `abort`: a kill switch scoped to this one proposal (one signature stops it)."""
    from ledger.cli.kill import cmd_kill as steward_kill

    a = tool.args
    info = tool.resolve(a.rollout)
    print(f"abort {info.name}: a kill switch on proposal {info.proposal[:12]} only")
    return steward_kill(
        _cli_args(
            tool, action="engage", all=False, target=None, proposal=info.proposal, reason=a.reason
        )
    )


def cmd_retry(tool: Tool) -> int:
    """Argo's `retry`: after a rollback, the fresh approvals the rules ask for (one event per
    approver key; the controller starts again once there are enough and nothing stops it)."""
    from ledger.cli.common import connect, fold
    from ledger.cli.decisions import cmd_decide as steward_decide
    from ledger.cli.rollout import retry_problem

    a = tool.args
    info = tool.resolve(a.rollout)
    args = _cli_args(tool, proposal=info.proposal, comment=a.comment)
    state, _ = fold(connect(args))
    proposal = state.proposals[bytes.fromhex(info.proposal)]
    problem = retry_problem(state, proposal)
    if problem is not None:
        raise CliError(f"retry {info.name}: {problem}")
    for key in a.key:
        print(f"retry {info.name}: a fresh approval with {key}")
        code = steward_decide(
            _cli_args(tool, proposal=info.proposal, comment=a.comment, key=[key]), "APPROVE"
        )
        if code:
            return code
    state, _ = fold(connect(args))
    proposal = state.proposals[proposal.entry_hash]
    policy = state.policy_of(proposal)
    fresh = state.valid_approvers(proposal)
    print(f"fresh approvals: {len(fresh)} of {policy.approvals_required}")
    scope = state.kill_switch_for(proposal)
    if scope is not None:
        which = "this rollout" if scope.kind == "PROPOSAL" else f"a {scope.kind} scope"
        print(
            f"a kill switch on {which} (seq {state.kill_switches[scope]}) still holds it: "
            f"the controller starts again once it is released (kubectl steward release)"
        )
    return 0


def audit_command(tool: Tool) -> list[str]:
    exe = Path(sys.executable).parent / "steward-audit"
    found = str(exe) if exe.exists() else (shutil.which("steward-audit") or "steward-audit")
    argv = [
        found,
        "verify",
        "--grpc",
        tool.server or "HOST:PORT",
        "--trust-root",
        tool.args.trust_root or "TRUST_ROOT.json",
    ]
    kubeconfig = tool.args.kubeconfig or os.environ.get("KUBECONFIG", "")
    if tool.args.check_cluster and kubeconfig:
        argv += ["--kubeconfig", kubeconfig]
    if tool.args.json:
        argv.append("--json")
    return argv


def cmd_verify(tool: Tool) -> int:
    argv = audit_command(tool)
    if not tool.server or not tool.args.trust_root:
        print(
            "verify runs the independent auditor, which trusts only the root keys you pin:",
            file=sys.stderr,
        )
        print("  " + shlex.join(["steward-audit", *argv[1:]]), file=sys.stderr)
        raise CliError(
            "give --server (or STEWARD_SERVER) and --trust-root FILE to run it from here"
        )
    print("running: " + shlex.join(["steward-audit", *argv[1:]]), file=sys.stderr, flush=True)
    try:
        return subprocess.run(argv, check=False).returncode
    except FileNotFoundError as exc:
        raise CliError(
            f"steward-audit not found ({argv[0]}): install Steward or put it on PATH"
        ) from exc
