"""`kubectl steward` as people run it: the built kubectl discovers the `kubectl-steward` console
script on PATH and runs it against the real control plane, a real ledger server and a real
steward-controller (serving ControllerService)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

from infra.kube_cluster import LocalCluster
from infra.processes import free_port, wait_for
from tests.e2e.conftest import V2, Controllers, Ledger
from tests.helpers.keys import write_principal_key

pytestmark = pytest.mark.kube

SCRIPTS = Path(
    sys.executable
).parent  # where pip put the console scripts, kubectl-steward among them


class Kubectl:
    def __init__(self, cluster: LocalCluster, ledger: Ledger, workdir: Path) -> None:
        self.workdir = workdir
        # Only the built kubectl and the console scripts: plugin discovery must find it by PATH.
        path = os.pathsep.join([str(cluster.bin_dir), str(SCRIPTS), "/usr/bin", "/bin"])
        self.env = {
            **os.environ,
            "PATH": path,
            "KUBECONFIG": str(cluster.kubeconfig),
            "STEWARD_SERVER": ledger.address,
        }
        self.env.pop("STEWARD_CONTROLLER", None)

    def run(
        self, *args: str, code: int | None = 0, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if code is not None:
            assert proc.returncode == code, (
                f"kubectl {' '.join(args)} exited {proc.returncode}, expected {code}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc


@pytest.fixture
def kubectl(kube_cluster: LocalCluster, ledger: Ledger, tmp_path: Path) -> Kubectl:
    assert (SCRIPTS / "kubectl-steward").exists(), (
        f"kubectl-steward is not installed next to {sys.executable}"
    )
    for who in ("alice", "bob", "oncall", "agent"):
        write_principal_key(ledger.cast, who, tmp_path)
    return Kubectl(kube_cluster, ledger, tmp_path)


def test_kubectl_discovers_the_plugin(kubectl: Kubectl) -> None:
    listed = kubectl.run("plugin", "list", code=None)
    assert "kubectl-steward" in listed.stdout, listed.stdout + listed.stderr
    helped = kubectl.run("steward", "--help")
    assert "kubectl steward approve 3fa2c1 --key alice.pem" in helped.stdout


def test_approve_watch_kill_and_history_through_kubectl(
    kubectl: Kubectl,
    ledger: Ledger,
    controllers: Controllers,
    kube_namespace: str,
    kube_api_client: client.ApiClient,
) -> None:
    ns = kube_namespace
    port = free_port()
    ctl = controllers.start("ctl-a", "--listen", f"127.0.0.1:{port}")
    p = ledger.propose(ns)
    ledger.evaluate(p)
    prefix = p.hex()[:8]
    name = f"model-server-{p.hex()[:10]}"

    # The agent that proposed cannot approve its own proposal, through kubectl either.
    selfish = kubectl.run("steward", "approve", prefix, "--key", "agent.pem", code=1)
    assert "SELF_APPROVAL" in selfish.stderr
    for who in ("alice", "bob"):
        out = kubectl.run("steward", "approve", prefix, "-n", ns, "--key", f"{who}.pem").stdout
        assert "appended ApprovalRecorded" in out and "binding to the latest safety eval" in out

    apps = client.AppsV1Api(kube_api_client)

    def canary_ready() -> bool:
        try:
            d = apps.read_namespaced_deployment("model-server-canary", ns)
        except client.ApiException:
            return False
        return (d.status.ready_replicas or 0) >= 1

    wait_for("a ready canary", canary_ready, 60)
    # The controller mirrors the rollout; the plugin finds it by its ModelRollout name.
    got = wait_for(
        "get with a canary pod in the tree",
        lambda: (
            lambda r: (
                r.stdout
                if r.returncode == 0
                and re.search(r"□ model-server-canary-\S+\s+Pod\s+✔ Running", r.stdout)
                else None
            )
        )(kubectl.run("steward", "get", name, "-n", ns, code=None)),
        30,
    )
    assert re.search(r"Status:\s+◌ Progressing", got), got
    assert re.search(rf"Images:\s+.*:v1 \(stable\)\n\s+{re.escape(V2)} \(canary\)", got), got
    assert re.search(r"Approvals:\s+2/2 \(human:alice@example.org, human:bob@example.org\)", got), (
        got
    )
    assert "◫ model-server " in got and "◫ model-server-canary" in got and "ReplicaSet" in got

    listed = kubectl.run("steward", "list", "-n", ns).stdout
    assert name in listed and "Progressing" in listed

    via_controller = wait_for(
        "ControllerService answers",
        lambda: (lambda r: r.stdout if r.returncode == 0 else None)(
            kubectl.run(
                "steward", "get", prefix, "-n", ns, "--controller", f"127.0.0.1:{port}", code=None
            )
        ),
        20,
    )
    assert "Source:" in via_controller and "controller" in via_controller
    assert re.search(r"Replicas:\s+\d/4 ready", via_controller), via_controller

    kubectl.run(
        "steward",
        "kill",
        name,
        "-n",
        ns,
        "--reason",
        "error spike seen by on-call",
        "--key",
        "oncall.pem",
    )
    status = kubectl.run(
        "steward", "status", prefix, "--controller", f"127.0.0.1:{port}", "--timeout", "60", code=1
    )
    assert "Killed" in status.stdout or "RolledBack" in status.stdout, status.stdout
    wait_for("the canary gone", lambda: not canary_ready(), 30)

    history = kubectl.run("steward", "history", name, "-n", ns).stdout
    kinds = [line.split()[3] for line in history.splitlines()]
    assert kinds[:5] == [
        "ProposalSubmitted",
        "EvalRecorded",
        "EvalRecorded",
        "ApprovalRecorded",
        "ApprovalRecorded",
    ]
    assert "RolloutStep" in kinds and "KillSwitchEngaged" in kinds
    assert "KILL SWITCH engaged (proposal" in history and "rolled back" in history
    assert ctl.child.running(), ctl.log()[-3000:]

    # Release needs two approvers on one event: one is refused, two succeed.
    alone = kubectl.run("steward", "release", name, "-n", ns, "--key", "alice.pem", code=1)
    assert "THRESHOLD_NOT_MET" in alone.stderr
    kubectl.run("steward", "release", name, "-n", ns, "--key", "alice.pem", "--key", "bob.pem")
