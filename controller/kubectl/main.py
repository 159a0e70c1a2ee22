"""``kubectl steward``'s entry point: the argument parser and ``main``.

kubectl runs any ``kubectl-<name>`` executable on PATH as ``kubectl <name>``; this is the
``kubectl-steward`` console script (also ``python -m controller.kubectl``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from controller.kubectl import PROG
from controller.kubectl.commands import (
    cmd_abort,
    cmd_decide,
    cmd_get,
    cmd_history,
    cmd_kill,
    cmd_list,
    cmd_pause_resume,
    cmd_retry,
    cmd_status,
    cmd_verify,
)
from controller.kubectl.sources import Tool
from ledger.cli.common import CliError
from ledger.errors import BadKeyError, FormatError, StewardError

EPILOG = """\
where rollouts come from:
  --controller HOST:PORT  ControllerService of steward-controller ($STEWARD_CONTROLLER)
  --server HOST:PORT      the ledger, verified and folded locally ($STEWARD_SERVER)
  (neither)               the ModelRollout objects in the cluster
  ROLLOUT is a ModelRollout name (<deployment>-<proposal hash[:10]>) or 6+ hex digits
  of the proposal hash.

examples:
  kubectl steward list -A
  kubectl steward get model-server-3fa2c1d4e5 -n models
  kubectl steward get 3fa2c1 -n models -w                # redraw as it changes
  kubectl steward status 3fa2c1 --timeout 600            # 0 promoted, 1 rolled back, 2 timeout
  kubectl steward history 3fa2c1                         # who proposed, evaluated, approved...
  kubectl steward approve 3fa2c1 --key alice.pem --comment "evals look right"
  kubectl steward reject 3fa2c1 --key bob.pem
  kubectl steward kill 3fa2c1 --reason "error spike" --key oncall.pem
  kubectl steward kill --target models/model-server --reason "error spike" --key oncall.pem
  kubectl steward kill --all --reason "incident 4711" --key oncall.pem
  kubectl steward release --target models/model-server --key alice.pem --key bob.pem
  kubectl steward release --all --key alice.pem --out release.evt   # then: steward sign/submit
  kubectl steward verify --trust-root trust.json

environment:
  STEWARD_SERVER, STEWARD_CONTROLLER   default --server and --controller
  STEWARD_KEY_PASSPHRASE               passphrase of encrypted key files (never a flag)
  KUBECONFIG                           as for kubectl
"""


def _common_flags(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Flags every command takes; on subcommands they default to SUPPRESS so that a value given
    before the command (`kubectl steward -n x get ...`) is not overwritten by the default."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--server",
        default=d(None),
        metavar="HOST:PORT",
        help="ledger address (default $STEWARD_SERVER)",
    )
    p.add_argument(
        "--controller",
        default=d(None),
        metavar="HOST:PORT",
        help="ControllerService address (default $STEWARD_CONTROLLER)",
    )
    p.add_argument(
        "--kubeconfig",
        default=d(None),
        help="kubeconfig file (default $KUBECONFIG, ~/.kube/config)",
    )
    p.add_argument("--context", default=d(None), help="kubeconfig context")
    p.add_argument("-n", "--namespace", default=d(None), help="namespace (default: the context's)")
    p.add_argument(
        "--request-timeout",
        type=float,
        default=d(10.0),
        metavar="SECONDS",
        help="per-call timeout (default 10)",
    )
    p.add_argument(
        "--tls-ca", default=d(None), help="CA bundle for the ledger and controller (enables TLS)"
    )
    p.add_argument(
        "--tls-cert",
        default=d(None),
        help="client certificate for mutual TLS (ledger and controller)",
    )
    p.add_argument(
        "--tls-key", default=d(None), help="client key for mutual TLS (ledger and controller)"
    )
    p.add_argument(
        "--passphrase-env",
        default=d("STEWARD_KEY_PASSPHRASE"),
        metavar="VAR",
        help="environment variable holding key passphrases",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="Watch and govern Steward model rollouts: the ledger decides, the controller "
        "obeys, people approve and stop.",
    )
    _common_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, help_text: str, func: Callable[[Tool], int], example: str, more: str = ""
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text + (f"\n\n{more}" if more else ""),
            epilog=f"example{'s' if chr(10) in example else ''}:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common_flags(p, suppress=True)
        p.set_defaults(func=func)
        return p

    def rollout_arg(p: argparse.ArgumentParser, optional: bool = False) -> None:
        p.add_argument(
            "rollout",
            metavar="ROLLOUT",
            nargs="?" if optional else None,
            help="ModelRollout name or proposal hash prefix (6+ hex digits)",
        )

    def signing(p: argparse.ArgumentParser, *, many: bool = False) -> None:
        p.add_argument(
            "--key",
            action="append",
            default=[],
            metavar="FILE",
            required=not many,
            help="your private key file" + (" (repeat: one per approver)" if many else ""),
        )

    p = add(
        "get",
        "a rollout's status and its Deployments, ReplicaSets and Pods",
        cmd_get,
        "kubectl steward get model-server-3fa2c1d4e5 -n models -w",
    )
    rollout_arg(p)
    p.add_argument(
        "-w", "--watch", action="store_true", help="redraw whenever it changes (Ctrl-C stops)"
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between reads with -w (default 1)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="stop watching after this many seconds (0: never)",
    )

    p = add("list", "rollouts in a table", cmd_list, "kubectl steward list -A")
    p.add_argument("-A", "--all-namespaces", action="store_true")

    p = add(
        "status",
        "wait until a rollout is promoted or rolled back; exit 0 promoted, 1 rolled "
        "back or killed, 2 timeout",
        cmd_status,
        "kubectl steward status 3fa2c1 --timeout 600",
    )
    rollout_arg(p)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between ledger reads (default 1)"
    )

    p = add(
        "history",
        "the rollout's story from the log: proposal, evals, approvals, steps, kills",
        cmd_history,
        "kubectl steward history 3fa2c1",
    )
    rollout_arg(p)

    for name, decision in (("approve", "APPROVE"), ("reject", "REJECT")):
        p = add(
            name,
            f"{name} the proposal, bound to the latest eval of every required suite",
            functools.partial(cmd_decide, decision=decision),
            f"kubectl steward {name} 3fa2c1 --key alice.pem",
        )
        rollout_arg(p)
        signing(p)
        p.add_argument("--comment", default="")

    for name, help_text, example in (
        (
            "kill",
            "engage a kill switch: one operator or approver signature stops at once",
            'kubectl steward kill --target models/model-server --reason "error spike" --key oncall.pem',
        ),
        (
            "release",
            "release a kill switch: k distinct approvers on one event (--key per approver, "
            "or --out FILE and `steward sign`)",
            "kubectl steward release --target models/model-server --key alice.pem --key bob.pem",
        ),
    ):
        action = "engage" if name == "kill" else "release"
        p = add(name, help_text, functools.partial(cmd_kill, action=action), example)
        rollout_arg(p, optional=True)
        p.add_argument("--all", action="store_true", help="global scope: every rollout")
        p.add_argument("--target", metavar="NS/DEPLOYMENT", help="every rollout of one Deployment")
        p.add_argument("--reason", required=name == "kill", default=None)
        signing(p, many=name == "release")
        if name == "release":
            p.add_argument(
                "--out",
                metavar="FILE",
                help="write the event for others to sign instead of submitting",
            )

    p = add(
        "verify",
        "audit the whole ledger with the independent steward-audit",
        cmd_verify,
        "kubectl steward verify --trust-root trust.json --check-cluster",
    )
    p.add_argument("--trust-root", help="pinned root keys (JSON, docs/AUDIT.md)")
    p.add_argument(
        "--check-cluster", action="store_true", help="also compare the live cluster with the log"
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")

    # Argo Rollouts' pause, resume, abort and retry, as governed events (docs/KUBECTL.md has
    # the side-by-side of every `kubectl argo rollouts` command).
    p = add(
        "pause",
        "hold a running rollout at its step and weight: one approver or operator signs",
        functools.partial(cmd_pause_resume, action="pause"),
        'kubectl steward pause 3fa2c1 --reason "p99 latency up 40%" --key oncall.pem',
        "The controller records PAUSED and holds the weight until a resume, through restarts\n"
        "(the pause is on the log). A kill switch (kill, abort) still stops it at once.",
    )
    rollout_arg(p)
    signing(p)
    p.add_argument("--reason", required=True, help="why: recorded on the log, shown by history")
    p = add(
        "resume",
        "let a paused rollout go on: the approvers the policy's resume_approvals asks for",
        functools.partial(cmd_pause_resume, action="resume"),
        'kubectl steward resume 3fa2c1 --key alice.pem --reason "a noisy neighbour"',
        "One --key per approver, on one event (default: one approver; never the proposer).\n"
        "Collected one by one instead, as a kill-switch release is: --out resume.evt, then\n"
        "each approver runs `steward sign resume.evt --key FILE`, then `steward submit resume.evt`.\n"
        "The rollout goes on from its step, whose hold time starts again. Refused: ROLLOUT_NOT_PAUSED,\n"
        "RESUME_NOT_FOR_CURRENT_PAUSE (signed for another pause), THRESHOLD_NOT_MET (too few).",
    )
    rollout_arg(p)
    signing(p, many=True)
    p.add_argument("--reason", default=None, help="why it may go on (default: resumed)")
    p.add_argument(
        "--out", metavar="FILE", help="write the event for others to sign instead of submitting"
    )
    p = add(
        "abort",
        "stop this rollout now and roll it back: a kill switch on this one proposal",
        cmd_abort,
        "kubectl steward abort 3fa2c1 --key oncall.pem",
        "The same event as `kill ROLLOUT`. Like any kill switch it stays engaged until released\n"
        "(release ROLLOUT, by the policy's kill_release_approvals approvers); then `retry`.",
    )
    rollout_arg(p)
    signing(p)
    p.add_argument("--reason", default="aborted", help="why (default: aborted)")
    p = add(
        "retry",
        "after a rollback, approve the rollout afresh so that it starts again (one approval "
        "per --key)",
        cmd_retry,
        "kubectl steward release 3fa2c1 --key alice.pem --key bob.pem   # the abort's switch\n"
        "  kubectl steward retry 3fa2c1 --key alice.pem --key bob.pem",
        "The rules count no approval made before a rollback, so a retry is what approve does:\n"
        "each approver's fresh decision, bound to the rollback and the latest evals. Refused\n"
        "here unless the rollout is rolled back; a kill switch still engaged (abort's) must be\n"
        "released before the controller starts it again.",
    )
    rollout_arg(p)
    signing(p, many=True)
    p.add_argument("--comment", default="retry", help="recorded with each approval")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tool = Tool(args)
    try:
        if args.command in ("kill", "release"):
            scopes = [x for x in (args.rollout, args.all, args.target) if x]
            if len(scopes) != 1:
                raise CliError(
                    f"{args.command}: choose exactly one of ROLLOUT, --all or --target NS/DEPLOYMENT"
                )
            if args.command == "release" and not args.key:
                raise CliError("release: give --key FILE (repeat for each approver, or use --out)")
        if args.command in ("resume", "retry") and not args.key:
            raise CliError(f"{args.command}: give --key FILE (repeat: one per approver)")
        return int(args.func(tool))
    except StewardError as exc:
        # 1 is kept for "the ledger refused"; a ledger that cannot be reached is like bad input.
        unreachable = bool(getattr(exc, "retryable", False))
        print(
            f"{PROG}: {f'ledger at {tool.server}: ' if unreachable else ''}{exc}", file=sys.stderr
        )
        return 2 if unreachable or isinstance(exc, CliError | FormatError | BadKeyError) else 1
    except KeyboardInterrupt:
        return 130
    finally:
        tool.close()


if __name__ == "__main__":
    sys.exit(main())
