"""The main job: a real ledger server on the embedded SQLite store, driven through gRPC.

It creates a cast of principals with their own keys, starts `python -m ledger.server` on a free
loopback port, and plays a governance story through the gRPC client: genesis by two of three
roots, key grants, a policy, an agent's proposal, evals, the agent's attempt to approve its own
proposal (refused), human approvals, rollout steps, a kill switch and its release, fresh
approvals and a promotion. It prints the timeline, then leaves the keys, the SQLite log, an
export and a trust root in the directory it names, with the command that verifies them.

Run: python -m ledger.demo [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ledger.client import LedgerClient, LedgerRpcError
from ledger.formats import KillScope, SignedEvent
from ledger.scenario import Cast, Flow, followed_state
from ledger.timeline import lines

PLAN_NOTE = "plan 10% → 50% (health-gated) → 100%, then promotion"


def say(text: str) -> None:
    print(text, flush=True)


def save_keys(cast: Cast, keys_dir: Path) -> None:
    keys_dir.mkdir(parents=True, exist_ok=True)
    for handle, actor in cast.actors.items():
        actor.key.save(keys_dir / f"{handle}.pem")
        (keys_dir / f"{handle}.pub.pem").write_bytes(actor.key.public.to_pem())
    cast.checkpoint_key.save(keys_dir / "ledger-checkpoint.pem")
    (keys_dir / "ledger-checkpoint.pub.pem").write_bytes(cast.checkpoint_key.public.to_pem())


@contextmanager
def ledger_server(workdir: Path) -> Iterator[str]:
    """Start the ledger server as its own process; yield its address; stop it at the end."""
    port_file = workdir / "ledger.port"
    port_file.unlink(missing_ok=True)
    log = (workdir / "ledger-server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger.server",
            "--db",
            str(workdir / "ledger.db"),
            "--checkpoint-key",
            str(workdir / "keys" / "ledger-checkpoint.pem"),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--checkpoint-every-entries",
            "8",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the ledger server did not start; see {workdir / 'ledger-server.log'}"
                )
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run(workdir: Path) -> int:
    cast = Cast.create()
    save_keys(cast, workdir / "keys")
    flow = Flow(cast, ledger="demo", origin="steward.dev/ledger/demo")
    with ledger_server(workdir) as address:
        say(f"ledger server on {address} (SQLite log {workdir / 'ledger.db'})")
        client = LedgerClient(address)
        flow.state = followed_state(
            client.read
        )  # approvals, reports and releases name their binding

        submit, refused = narrator(client)

        say("\n1. genesis, keys and a policy (root threshold 2 of 3)")
        submit("genesis signed by two roots", flow.genesis())
        for grant in flow.grants():
            submit(f"grant {grant_principal(grant)}", grant)
        submit(f"policy: 2 human approvals, {PLAN_NOTE}", flow.policy())

        say("\n2. an agent proposes, evaluators measure, people decide")
        proposal = submit("agent:researcher-7 proposes model-server:v2", flow.propose())
        evals = (
            submit("evalbot: safety refusal_rate=0.99", flow.eval(proposal, "safety", 0.99)),
            submit("evalbot: quality accuracy=0.91", flow.eval(proposal, "quality", 0.91)),
        )
        refused("the agent approves its own proposal", flow.approve(proposal, evals, "agent"))
        submit("alice approves (bound to the latest evals)", flow.approve(proposal, evals, "alice"))
        submit("bob approves", flow.approve(proposal, evals, "bob"))

        say("\n3. the rollout starts; on-call stops it with one signature")
        submit("controller: canary 10%", flow.step(proposal, 0, 10, "STARTED"))
        scope = KillScope("TARGET", "models", "model-server")
        submit(
            "on-call engages the kill switch for the target",
            flow.kill(scope, reason="latency spike"),
        )
        refused("the controller tries to advance anyway", flow.step(proposal, 1, 50, "ADVANCED"))
        submit("controller: rolled back, canary removed", flow.step(proposal, 0, 0, "ROLLED_BACK"))
        refused("alice alone releases the kill switch", flow.release(scope, signers=("alice",)))
        submit("alice and bob release it together", flow.release(scope))

        say("\n4. nothing resumes without a fresh decision; then promotion")
        refused(
            "the controller restarts on the old approvals", flow.step(proposal, 0, 10, "STARTED")
        )
        submit("alice approves again", flow.approve(proposal, evals, "alice"))
        submit("bob approves again", flow.approve(proposal, evals, "bob"))
        submit("controller: canary 10%", flow.step(proposal, 0, 10, "STARTED"))
        submit("controller: canary 50%", flow.step(proposal, 1, 50, "ADVANCED"))
        submit("monitor: step 1 healthy", flow.health(proposal, 1, True))
        submit("controller: canary 100%", flow.step(proposal, 2, 100, "ADVANCED"))
        submit("controller: promoted", flow.step(proposal, 2, 100, "PROMOTED"))

        checkpoint = client.checkpoint(publish_now=True)
        say("\n5. the timeline, as anyone can rebuild it from the log")
        for line in lines(client.read(0)):
            say("  " + line)
        say(
            f"\nlatest checkpoint (size {checkpoint.size}):\n"
            + "".join("  " + ln + "\n" for ln in checkpoint.note.splitlines())
        )

        from ledger.export import write_export, write_trust_root

        export = workdir / "ledger-export.avro"
        count = write_export(client, export, progress=False)
        trust = workdir / "trust-root.json"
        write_trust_root(client, trust)
    say(f"left in {workdir}:")
    say("  keys/                 every principal's key (PKCS#8 PEM) and public key")
    say(f"  ledger.db             the SQLite log ({count} entries)")
    say("  ledger-export.avro    the offline export for auditors")
    say("  trust-root.json       the pinned root keys and the ledger's vkey")
    say("verify it independently with:")
    say(f"  steward-audit verify --export {export} --trust-root {trust}")
    return 0


def narrator(
    client: LedgerClient,
) -> tuple[Callable[[str, SignedEvent], bytes], Callable[[str, SignedEvent], None]]:
    """`submit` appends and prints the receipt; `refused` shows the ledger refusing an event."""

    def submit(what: str, event: SignedEvent) -> bytes:
        receipt = client.append(event)
        say(f"  ✓ {what:<54} seq {receipt.seq:>3}  {receipt.leaf_hash.hex()[:12]}")
        return bytes(receipt.leaf_hash)

    def refused(what: str, event: SignedEvent) -> None:
        try:
            client.append(event)
        except LedgerRpcError as exc:
            say(f"  ✗ {what:<54} refused: {exc.code.name} {exc.violation_code} — {exc.message}")
            return
        raise SystemExit(f"expected the ledger to refuse: {what}")

    return submit, refused


def grant_principal(event: SignedEvent) -> str:
    from ledger.formats import KeyGranted, decode_body

    payload = decode_body(event.body).payload
    assert isinstance(payload, KeyGranted)
    return f"{payload.principal} ({', '.join(payload.roles)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledger.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="where to leave keys, log and export (default: a new temporary directory)",
    )
    args = parser.parse_args(argv)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="steward-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        parser.error(f"--dir {workdir} is not empty; the demo starts a new ledger")
    say(f"Steward demo in {workdir}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run(workdir)


if __name__ == "__main__":
    sys.exit(main())
