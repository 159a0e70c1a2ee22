"""The `steward` CLI as people use it: subprocesses against a real ledger server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.processes import start_python, wait_for_port_file
from ledger.client import LedgerClient
from ledger.events import new_body, sign
from ledger.formats import ObservedState, RolloutStep
from ledger.keys import PrivateKey
from ledger.merkle import leaf_hash
from ledger.tlog_proof import verify_tlog_proof

POLICY = """\
id: default
selector: {namespace: models, deployment: "*"}
required_evals:
  - {suite: safety, metric: refusal_rate, op: GE, threshold: 0.95}
  - {suite: quality, metric: accuracy, op: GE, threshold: 0.8}
approvals: {required: 2, kinds: [human], veto_on_reject: true}
plan:
  - {weight: 10, hold_seconds: 0}
  - {weight: 100, hold_seconds: 0}
kill_switch: {release_approvals: 2, rollback_bound_ms: 5000}
"""


@dataclass
class Cli:
    workdir: Path
    server: str

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "STEWARD_SERVER": self.server}
        proc = subprocess.run(
            [sys.executable, "-m", "ledger.cli", *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert proc.returncode == 0, (
                f"steward {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc


def _steward(workdir: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    for name in (
        "root1",
        "root2",
        "root3",
        "agent",
        "evalbot",
        "alice",
        "bob",
        "oncall",
        "controller",
        "sre",
        "ledger",
    ):
        _steward(tmp_path, "keys", "new", f"{name}.pem")
    port_file = tmp_path / "port"
    server = start_python(
        [
            "-m",
            "ledger.cli",
            "serve",
            "--db",
            str(tmp_path / "log.db"),
            "--checkpoint-key",
            "ledger.pem",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ],
        tmp_path / "server.log",
        name="steward serve",
        cwd=tmp_path,
    )
    with server:
        yield Cli(tmp_path, f"127.0.0.1:{wait_for_port_file(port_file, 30, child=server)}")


@dataclass
class _Controller:
    """Signs rollout steps with the controller's key and appends them through the client."""

    cli: Cli
    proposal: bytes

    def step(self, step: int, weight: int, phase: str) -> None:
        client = LedgerClient(self.cli.server, timeout=10, retries=0)
        try:
            payload = RolloutStep(
                self.proposal,
                step,
                weight,
                phase,
                phase.lower(),
                ObservedState(4, 0, 0, "registry.example/m:v1", ""),
            )
            key = PrivateKey.load(self.cli.workdir / "controller.pem")
            client.append(sign(new_body("cli", payload), key))
        finally:
            client.close()


def _hash(output: str) -> str:
    match = re.search(r"entry hash ([0-9a-f]{64})", output)
    assert match, output
    return match.group(1)


def test_full_governance_flow_through_the_cli(cli: Cli) -> None:
    cli.run(
        "ledger",
        "init",
        "--name",
        "cli",
        "--origin",
        "example.org/steward/cli",
        "--root",
        "human:ada@example.org=root1.pub.pem",
        "--root",
        "human:grace@example.org=root2.pub.pem",
        "--root",
        "human:edsger@example.org=root3.pub.pem",
        "--threshold",
        "2",
        "--checkpoint-public",
        "ledger.pub.pem",
        "--key",
        "root1.pem",
        "--key",
        "root2.pem",
    )
    roots = ("--key", "root1.pem", "--key", "root3.pem")
    for principal, key, roles in (
        ("agent:researcher-7", "agent", ("proposer", "approver")),
        ("service:evalbot", "evalbot", ("evaluator",)),
        ("human:alice@example.org", "alice", ("approver",)),
        ("human:bob@example.org", "bob", ("approver",)),
        ("human:oncall@example.org", "oncall", ("operator",)),
        ("service:steward-controller", "controller", ("controller",)),
    ):
        role_args = [a for r in roles for a in ("--role", r)]
        cli.run(
            "grant", "--principal", principal, "--public-key", f"{key}.pub.pem", *role_args, *roots
        )
    (cli.workdir / "policy.yaml").write_text(POLICY)
    cli.run("policy", "set", "policy.yaml", *roots)

    proposal = _hash(
        cli.run(
            "propose",
            "--target",
            "models/model-server",
            "--image",
            "registry.example/m:v2",
            "--key",
            "agent.pem",
        ).stdout
    )
    short = proposal[:10]
    cli.run(
        "eval",
        "--proposal",
        short,
        "--suite",
        "safety",
        "--metric",
        "refusal_rate=0.99",
        "--key",
        "evalbot.pem",
    )
    cli.run(
        "eval",
        "--proposal",
        short,
        "--suite",
        "quality",
        "--metric",
        "accuracy=0.9",
        "--key",
        "evalbot.pem",
    )

    self_approval = cli.run("approve", "--proposal", short, "--key", "agent.pem", ok=False)
    assert self_approval.returncode == 1
    assert "SELF_APPROVAL" in self_approval.stderr and "FAILED_PRECONDITION" in self_approval.stderr
    cli.run("approve", "--proposal", short, "--key", "alice.pem")
    cli.run("approve", "--proposal", short, "--key", "bob.pem")

    status = json.loads(cli.run("status", "--json").stdout)
    (doc,) = status["proposals"]
    assert doc["hash"] == proposal
    assert doc["approvers"] == ["human:alice@example.org", "human:bob@example.org"]

    # The controller (a program, not a CLI user) starts the canary and rolls it back under
    # the kill switch; the CLI's release and fresh approvals then name what binds them (#14).
    controller = _Controller(cli, bytes.fromhex(proposal))
    controller.step(0, 10, "STARTED")
    engaged = _hash(
        cli.run(
            "kill",
            "engage",
            "--target",
            "models/model-server",
            "--reason",
            "error spike",
            "--key",
            "oncall.pem",
        ).stdout
    )
    controller.step(0, 0, "ROLLED_BACK")
    alone = cli.run(
        "kill", "release", "--target", "models/model-server", "--key", "alice.pem", ok=False
    )
    assert "THRESHOLD_NOT_MET" in alone.stderr
    out = cli.run(
        "kill",
        "release",
        "--target",
        "models/model-server",
        "--out",
        "release.evt",
        "--key",
        "alice.pem",
    )
    assert "binding to the engagement at seq" in out.stdout and f"({engaged[:12]})" in out.stdout
    cli.run("sign", "release.evt", "--key", "bob.pem")
    cli.run("submit", "release.evt")
    assert json.loads(cli.run("status", "--json").stdout)["kill_switches"] == []
    assert (
        "binding to the latest rollback"
        in cli.run("approve", "--proposal", short, "--key", "alice.pem").stdout
    )
    cli.run("approve", "--proposal", short, "--key", "bob.pem")
    controller.step(0, 10, "STARTED")  # the fresh approvals count

    timeline = cli.run("log").stdout
    assert "proposed registry.example/m:v2" in timeline
    assert "KILL SWITCH engaged (target models/model-server)" in timeline
    assert "kill switch released" in timeline
    assert len(timeline.splitlines()) == json.loads(cli.run("status", "--json").stdout)["size"]

    note = cli.run("checkpoint", "--publish").stdout
    vkey = cli.run("vkey").stdout.strip()
    assert note.startswith("example.org/steward/cli\n")
    bundle = cli.run("proof", "--seq", "3").stdout
    entry3 = _entry_bytes(cli, 3)
    checkpoint = verify_tlog_proof(bundle, leaf_hash(entry3), vkey)
    assert checkpoint.size >= 4


ANALYSED_POLICY = POLICY.replace(
    "  - {weight: 100, hold_seconds: 0}\n",
    "  - {weight: 50, hold_seconds: 0, health_gate: true}\n"
    "  - {weight: 100, hold_seconds: 0}\n"
    "analysis:\n"
    "  - name: error-rate\n"
    '    query: sum(rate(http_requests_total{{canary_selector},code=~"5.."}[1m]))\n'
    "    op: LE\n"
    "    threshold: 0.05\n"
    "    interval_seconds: 10\n"
    "    count: 3\n"
    "    no_data: {deadline_seconds: 120, action: PAUSE}\n",
)


def test_health_reports_by_hand(cli: Cli) -> None:
    roots = ("--key", "root1.pem", "--key", "root2.pem")
    cli.run(
        "ledger",
        "init",
        "--name",
        "cli",
        "--origin",
        "example.org/steward/cli",
        "--root",
        "human:ada@example.org=root1.pub.pem",
        "--root",
        "human:grace@example.org=root2.pub.pem",
        "--threshold",
        "2",
        "--checkpoint-public",
        "ledger.pub.pem",
        *roots,
    )
    for principal, key, role in (
        ("agent:researcher-7", "agent", "proposer"),
        ("service:evalbot", "evalbot", "evaluator"),
        ("human:alice@example.org", "alice", "approver"),
        ("human:bob@example.org", "bob", "approver"),
        ("service:steward-controller", "controller", "controller"),
        ("human:sre@example.org", "sre", "monitor"),
    ):
        cli.run(
            "grant",
            "--principal",
            principal,
            "--public-key",
            f"{key}.pub.pem",
            "--role",
            role,
            *roots,
        )
    (cli.workdir / "policy.yaml").write_text(ANALYSED_POLICY)
    cli.run("policy", "set", "policy.yaml", *roots)
    proposal = _hash(
        cli.run(
            "propose",
            "--target",
            "models/model-server",
            "--image",
            "registry.example/m:v2",
            "--key",
            "agent.pem",
        ).stdout
    )
    short = proposal[:10]
    for suite, metric in (("safety", "refusal_rate=0.99"), ("quality", "accuracy=0.9")):
        cli.run(
            "eval",
            "--proposal",
            short,
            "--suite",
            suite,
            "--metric",
            metric,
            "--key",
            "evalbot.pem",
        )
    cli.run("approve", "--proposal", short, "--key", "alice.pem")
    cli.run("approve", "--proposal", short, "--key", "bob.pem")
    controller = _Controller(cli, bytes.fromhex(proposal))
    controller.step(0, 10, "STARTED")

    # Step 0 has no gate and no check: a report by hand is the signer's word.
    out = cli.run(
        "health",
        "report",
        "--proposal",
        short,
        "--step",
        "0",
        "--metric",
        "p99_ms=180",
        "--metric",
        "error_rate=0.002",
        "--healthy",
        "--key",
        "sre.pem",
    )
    assert "binding to the run of step 0" in out.stdout
    controller.step(1, 50, "ADVANCED")
    # Step 1 is gated by a check: said so, and the report is signed offline then submitted.
    out = cli.run(
        "health",
        "report",
        "--proposal",
        short,
        "--step",
        "1",
        "--metric",
        "error_rate=0.2",
        "--unhealthy",
        "--out",
        "report.evt",
        "--key",
        "sre.pem",
    )
    assert "gated by checks (error-rate)" in out.stdout and "stops the canary" in out.stdout
    cli.run("submit", "report.evt")
    refused = cli.run(
        "health",
        "report",
        "--proposal",
        short,
        "--step",
        "1",
        "--healthy",
        "--key",
        "alice.pem",
        ok=False,
    )
    assert "ROLE_REQUIRED" in refused.stderr
    neither = cli.run(
        "health", "report", "--proposal", short, "--step", "1", "--key", "sre.pem", ok=False
    )
    assert neither.returncode == 2 and "--healthy" in neither.stderr
    timeline = cli.run("log").stdout
    assert "reported step 0 of" in timeline and "healthy" in timeline
    assert "reported step 1 of" in timeline and "UNHEALTHY" in timeline


def _entry_bytes(cli: Cli, seq: int) -> bytes:
    from ledger.client import LedgerClient

    return bytes(LedgerClient(cli.server).get(seq).entry_bytes)


def test_cli_errors_name_the_problem(cli: Cli) -> None:
    missing = cli.run(
        "propose", "--target", "models", "--image", "x", "--key", "agent.pem", ok=False
    )
    assert missing.returncode == 2 and "NAMESPACE/DEPLOYMENT" in missing.stderr
    no_key = cli.run(
        "grant",
        "--principal",
        "human:x@example.org",
        "--public-key",
        "alice.pem",
        "--role",
        "approver",
        "--key",
        "root1.pem",
        ok=False,
    )
    assert "private key" in no_key.stderr
    (cli.workdir / "bad.yaml").write_text("id: p\nselector: {namespace: models}\n")
    bad = cli.run("policy", "set", "bad.yaml", "--key", "root1.pem", ok=False)
    assert "plan is required" in bad.stderr


def test_help_teaches() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in ("approve", "kill", "export", "STEWARD_SERVER", "a governance flow"):
        assert word in out


def test_keys_new_principal_is_recorded_and_used_by_init_and_grant(tmp_path: Path) -> None:
    """`keys new --principal` writes the principal into the .pub.pem; `ledger init --root FILE`
    and `grant` without --principal take it from there; a key without one is told to name it."""
    for name, principal in (
        ("root-a", "human:ada@example.org"),
        ("root-b", "human:grace@example.org"),
        ("agent", "agent:researcher-7"),
    ):
        _steward(tmp_path, "keys", "new", f"{name}.pem", "--principal", principal)
    _steward(tmp_path, "keys", "new", "ledger.pem")
    _steward(tmp_path, "keys", "new", "anonymous.pem")
    shown = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "keys", "show", "agent.pub.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "principal: agent:researcher-7" in shown.stdout, shown.stdout

    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "ledger",
            "init",
            "--name",
            "p",
            "--origin",
            "example.org/p",
            "--root",
            "root-a.pub.pem",
            "--root",
            "root-b.pub.pem",
            "--threshold",
            "2",
            "--checkpoint-public",
            "ledger.pub.pem",
            "--key",
            "root-a.pem",
            "--key",
            "root-b.pem",
            "--out",
            "genesis.evt",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    from ledger.formats import decode_body, decode_signed_event

    genesis = decode_body(decode_signed_event((tmp_path / "genesis.evt").read_bytes()).body).payload
    assert [r.principal for r in genesis.roots] == [
        "human:ada@example.org",
        "human:grace@example.org",
    ]

    signing = ["--key", "root-a.pem", "--key", "root-b.pem", "--ledger-name", "p"]
    grant = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "grant",
            "--public-key",
            "agent.pub.pem",
            "--role",
            "proposer",
            *signing,
            "--out",
            "grant.evt",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert grant.returncode == 0, grant.stderr
    granted = decode_body(decode_signed_event((tmp_path / "grant.evt").read_bytes()).body).payload
    assert granted.principal == "agent:researcher-7"

    unnamed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "grant",
            "--public-key",
            "anonymous.pub.pem",
            "--role",
            "proposer",
            *signing,
            "--out",
            "x.evt",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unnamed.returncode == 2 and "names no principal: give --principal" in unnamed.stderr, (
        unnamed.stderr
    )


def test_pause_and_resume_through_the_cli(cli: Cli) -> None:
    """An operator pauses; a resume needs the policy's two approvers, collected as a release
    is (--out, steward sign, steward submit); the agent that proposed never counts."""
    cli.run(
        "ledger",
        "init",
        "--name",
        "cli",
        "--origin",
        "example.org/steward/cli",
        "--root",
        "human:ada@example.org=root1.pub.pem",
        "--root",
        "human:grace@example.org=root2.pub.pem",
        "--threshold",
        "2",
        "--checkpoint-public",
        "ledger.pub.pem",
        "--key",
        "root1.pem",
        "--key",
        "root2.pem",
    )
    roots = ("--key", "root1.pem", "--key", "root2.pem")
    for principal, key, roles in (
        ("agent:researcher-7", "agent", ("proposer", "approver")),
        ("service:evalbot", "evalbot", ("evaluator",)),
        ("human:alice@example.org", "alice", ("approver",)),
        ("human:bob@example.org", "bob", ("approver",)),
        ("human:oncall@example.org", "oncall", ("operator",)),
        ("service:steward-controller", "controller", ("controller",)),
    ):
        role_args = [a for r in roles for a in ("--role", r)]
        cli.run(
            "grant", "--principal", principal, "--public-key", f"{key}.pub.pem", *role_args, *roots
        )
    (cli.workdir / "policy.yaml").write_text(
        POLICY.replace("kinds: [human]", "kinds: [human, agent]") + "resume_approvals: 2\n"
    )
    cli.run("policy", "set", "policy.yaml", *roots)
    proposal = _hash(
        cli.run(
            "propose",
            "--target",
            "models/model-server",
            "--image",
            "registry.example/m:v2",
            "--key",
            "agent.pem",
        ).stdout
    )
    short = proposal[:10]
    for suite, metric in (("safety", "refusal_rate=0.99"), ("quality", "accuracy=0.9")):
        cli.run(
            "eval",
            "--proposal",
            short,
            "--suite",
            suite,
            "--metric",
            metric,
            "--key",
            "evalbot.pem",
        )
    for who in ("alice", "bob"):
        cli.run("approve", "--proposal", short, "--key", f"{who}.pem")

    early = cli.run(
        "rollout", "pause", "--proposal", short, "--reason", "x", "--key", "oncall.pem", ok=False
    )
    assert early.returncode == 1 and "ROLLOUT_NOT_RUNNING" in early.stderr
    controller = _Controller(cli, bytes.fromhex(proposal))
    controller.step(0, 10, "STARTED")
    paused = cli.run(
        "rollout", "pause", "--proposal", short, "--reason", "p99 latency up", "--key", "oncall.pem"
    )
    pause_hash = _hash(paused.stdout)
    assert "pausing the rollout" in paused.stdout and "at step 0" in paused.stdout

    (doc,) = json.loads(cli.run("status", "--json").stdout)["proposals"]
    assert doc["paused"]["by"] == "human:oncall@example.org"
    assert doc["paused"]["resume_approvals"] == 2
    assert "PAUSED by human:oncall@example.org" in cli.run("status").stdout

    # The proposing agent and alice: one approver counted, the ledger refuses.
    short_of_two = cli.run(
        "rollout",
        "resume",
        "--proposal",
        short,
        "--key",
        "agent.pem",
        "--key",
        "alice.pem",
        ok=False,
    )
    assert short_of_two.returncode == 1
    assert "THRESHOLD_NOT_MET" in short_of_two.stderr
    assert "agent:researcher-7 (proposer of this change)" in short_of_two.stderr
    assert "these keys give 1 (human:alice@example.org)" in short_of_two.stdout
    assert "collect the others with --out FILE" in short_of_two.stdout

    out = cli.run(
        "rollout",
        "resume",
        "--proposal",
        short,
        "--reason",
        "explained",
        "--key",
        "alice.pem",
        "--out",
        "resume.evt",
    )
    assert "binding to the pause at seq" in out.stdout and f"({pause_hash[:12]})" in out.stdout
    cli.run("sign", "resume.evt", "--key", "bob.pem")
    cli.run("submit", "resume.evt")
    again = cli.run(
        "rollout", "resume", "--proposal", short, "--key", "alice.pem", "--key", "bob.pem", ok=False
    )
    assert "ROLLOUT_NOT_PAUSED" in again.stderr
    assert json.loads(cli.run("status", "--json").stdout)["proposals"][0]["paused"] is None
    timeline = cli.run("log").stdout
    assert (
        "human:oncall@example.org paused the rollout" in timeline and "p99 latency up" in timeline
    )
    assert "resumed the rollout" in timeline and "explained" in timeline
    help_text = cli.run("rollout", "resume", "--help").stdout
    assert "resume_approvals" in help_text and "steward sign resume.evt" in help_text
