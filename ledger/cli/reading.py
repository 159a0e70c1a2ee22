"""Reading a ledger: `steward status` (and its JSON document, `status_document`), `log`,
`checkpoint`, `proof`, `vkey` and `export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ledger.cli.common import connect, fold
from ledger.names import printable
from ledger.state import LedgerState


def cmd_status(args: argparse.Namespace) -> int:
    client = connect(args)
    state, _ = fold(client)
    if args.json:
        print(json.dumps(status_document(state), indent=2))
        return 0
    print(
        printable(
            f"ledger {state.ledger} ({state.origin}): {state.size} entries, root threshold {state.root_threshold}"
        )
    )
    if state.kill_switches:
        from ledger.timeline import scope_text

        for scope, seq in state.kill_switches.items():
            print(printable(f"  KILL SWITCH ENGAGED: {scope_text(scope)} since seq {seq}"))
    for doc in status_document(state)["proposals"]:
        if args.proposal and not doc["hash"].startswith(args.proposal):
            continue
        print(
            printable(
                f"  proposal {doc['hash'][:12]} {doc['target']} → {doc['candidate']}: {doc['phase']}"
                f" step {doc['step']} weight {doc['weight']}%, approvals {len(doc['approvers'])}/{doc['approvals_required']}"
                f" ({', '.join(doc['approvers']) or 'none'})"
            )
        )
        if doc["paused"]:
            pause = doc["paused"]
            print(
                printable(
                    f"      PAUSED by {pause['by']} at seq {pause['seq']}: {pause['reason']}"
                    f" (a resume needs {pause['resume_approvals']} approver(s))"
                )
            )
        for suite, ev in doc["evals"].items():
            print(
                printable(
                    f"      eval {suite}: {'pass' if ev['passed'] else 'FAIL ' + '; '.join(ev['failures'])}"
                )
            )
    return 0


def status_document(state: LedgerState) -> dict[str, Any]:
    proposals = []
    for h, p in state.proposals.items():
        current = p.current
        proposals.append(
            {
                "hash": h.hex(),
                "seq": p.seq,
                "target": f"{p.proposal.target.namespace}/{p.proposal.target.deployment}",
                "candidate": p.proposal.candidate.image,
                "proposer": p.proposer,
                "phase": p.phase,
                "step": current.step if current else None,
                "weight": current.weight if current else 0,
                "approvers": state.valid_approvers(p),
                "approvals_required": state.policy_of(p).approvals_required,
                "kill_switch": state.kill_switch_for(p) is not None,
                # The governed pause in force (RolloutPaused not yet resumed), if any.
                "paused": None
                if p.pause is None
                else {
                    "seq": p.pause.seq,
                    "by": p.pause.author,
                    "reason": p.pause.reason,
                    "resume_approvals": state.policy_of(p).resume_approvals,
                },
                "evals": {
                    s: {
                        "passed": e.passed,
                        "failures": list(e.failures),
                        "hash": e.entry_hash.hex(),
                    }
                    for s, e in p.latest_evals.items()
                },
            }
        )
    return {
        "ledger": state.ledger,
        "size": state.size,
        "proposals": proposals,
        "kill_switches": [
            {
                "kind": s.kind,
                "namespace": s.namespace,
                "deployment": s.deployment,
                "proposal": s.proposal.hex() if s.proposal else None,
                "seq": seq,
            }
            for s, seq in state.kill_switches.items()
        ],
    }


def cmd_log(args: argparse.Namespace) -> int:
    from ledger.timeline import lines

    client = connect(args)
    state = LedgerState()
    entries = client.read(0, follow=args.follow)
    for line in lines(entries, state):
        if args.from_seq is None or int(line.split()[0]) >= args.from_seq:
            print(line, flush=True)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    client = connect(args)
    cp = client.checkpoint(publish_now=args.publish)
    print(cp.note, end="")
    return 0


def cmd_proof(args: argparse.Namespace) -> int:
    client = connect(args)
    print(client.tlog_proof(args.seq), end="")
    return 0


def cmd_vkey(args: argparse.Namespace) -> int:
    print(connect(args).vkey())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ledger.export import write_export

    client = connect(args)
    count = write_export(
        client, Path(args.out), progress=not args.quiet, cosignatures=args.cosignatures
    )
    print(f"exported {count} entries to {args.out}")
    return 0


def cmd_trust_root(args: argparse.Namespace) -> int:
    from ledger.c2sp_text import MalformedError
    from ledger.errors import ConfigError
    from ledger.export import write_trust_root

    client = connect(args)
    try:
        write_trust_root(
            client,
            Path(args.out),
            witnesses=args.witness,
            witness_threshold=args.witness_threshold,
        )
    except MalformedError as exc:
        raise ConfigError(f"--witness: {exc}") from None
    print(f"wrote the trust root to {args.out}")
    return 0
