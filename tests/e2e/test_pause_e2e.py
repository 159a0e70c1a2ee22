"""Pause and resume end to end (#17): `kubectl steward pause|resume` against a real ledger
server, a real steward-controller and the local control plane.

A rollout paused at its first step keeps that step's weight (seen by a watch on the
Deployments, not by asking the controller), records PAUSED once, and still holds after the
controller is restarted (the pause is on the log and in its snapshot). A resume signed by one
approver where the policy asks for two is refused with THRESHOLD_NOT_MET and changes nothing;
signed by two, the rollout goes on to promotion. steward-audit then verifies the whole log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client, watch

from infra.kube_cluster import LocalCluster
from infra.kube_workload import read_deployment
from infra.processes import wait_for
from ledger.export import write_trust_root
from ledger.formats import PlanStep
from tests.e2e.conftest import V2, Controllers, Ledger
from tests.e2e.test_controller_e2e import mirror
from tests.e2e.test_status_notifications import conditions, our_events
from tests.helpers.keys import write_principal_key

pytestmark = pytest.mark.kube

NAME, CANARY = "model-server", "model-server-canary"
SCRIPTS = Path(sys.executable).parent  # kubectl-steward and steward-audit, beside this Python
# Step 0 holds 10 s: without the pause it would advance within the hold we watch below.
PLAN = (PlanStep(25, 10, False), PlanStep(50, 0, False), PlanStep(100, 0, False))
HELD = (3, 1)  # 25% of 4 replicas: stable 3, canary 1


def kubectl_steward(
    cluster: LocalCluster, ledger: Ledger, workdir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`kubectl steward ...` as a person runs it: kubectl finds the plugin on PATH."""
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(cluster.bin_dir), str(SCRIPTS), "/usr/bin", "/bin"]),
        "KUBECONFIG": str(cluster.kubeconfig),
        "STEWARD_SERVER": ledger.address,
    }
    env.pop("STEWARD_CONTROLLER", None)
    return subprocess.run(
        ["kubectl", "steward", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def deployments(apps: client.AppsV1Api, ns: str) -> tuple[int, int]:
    stable, canary = read_deployment(apps, ns, NAME), read_deployment(apps, ns, CANARY)
    assert stable is not None
    return stable.spec.replicas, canary.spec.replicas if canary else 0


def watched_replicas(apps: client.AppsV1Api, ns: str, seconds: int) -> set[tuple[str, int]]:
    """Every (Deployment, spec.replicas) the API server reports for the stable and the canary
    over `seconds`: the current objects first, then each change a watch delivers."""
    seen: set[tuple[str, int]] = set()
    listed = apps.list_namespaced_deployment(ns)
    for d in listed.items:
        seen.add((d.metadata.name, d.spec.replicas))
    w = watch.Watch()
    for event in w.stream(
        apps.list_namespaced_deployment,
        ns,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=seconds,
    ):
        d = event["object"]
        seen.add((d.metadata.name, d.spec.replicas))
    return {(n, r) for n, r in seen if n in (NAME, CANARY)}


def test_a_pause_holds_through_a_restart_and_a_resume_needs_its_approvers(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    kube_cluster: LocalCluster,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    ns = kube_namespace
    for who in ("alice", "bob", "oncall"):
        write_principal_key(ledger.cast, who, tmp_path)
    ledger.ok(ledger.flow.policy(namespace=ns, plan=PLAN, resume_approvals=2))
    controllers.start("ctl-a")
    p, _ = ledger.approved(ns, V2)
    wait_for("STARTED", lambda: ledger.steps(p)[:1] == [(0, 25, "STARTED")], 60)
    paused = kubectl_steward(
        kube_cluster,
        ledger,
        tmp_path,
        "pause",
        p.hex()[:10],
        "-n",
        ns,
        "--reason",
        "p99 latency up 40%",
        "--key",
        "oncall.pem",
    )
    assert paused.returncode == 0, paused.stdout + paused.stderr
    wait_for("PAUSED", lambda: (0, 25, "PAUSED") in ledger.steps(p), 30)
    wait_for("the step's weight applied", lambda: deployments(apps, ns) == HELD, 60)

    # What plain kubectl shows: the Paused condition with the person's reason, and an Event.
    wait_for(
        "Paused condition",
        lambda: conditions(custom, ns, p).get("Paused", {}).get("status") == "True",
        30,
    )
    paused_condition = conditions(custom, ns, p)["Paused"]
    assert paused_condition["reason"] == "RolloutPaused"
    assert "p99 latency up 40%" in paused_condition["message"]
    assert conditions(custom, ns, p)["Progressing"]["status"] == "False"
    obj_name = mirror(custom, ns, p)["metadata"]["name"]
    wait_for(
        "a RolloutPaused Event",
        lambda: any(
            e.reason == "RolloutPaused" for e in our_events(core, ns, "ModelRollout", obj_name)
        ),
        30,
    )

    # Longer than the step's hold: nothing moves, on the log or in the cluster.
    assert watched_replicas(apps, ns, 12) == {(NAME, 3), (CANARY, 1)}
    assert ledger.steps(p) == [(0, 25, "STARTED"), (0, 25, "PAUSED")]

    # A restarted controller folds the pause (from its snapshot and the log) and holds too.
    controllers.started[-1].stop()
    restarted = controllers.start("ctl-a")
    wait_for("the restarted controller leading", lambda: "lease acquired" in restarted.log(), 60)
    assert "replayed size=" in restarted.log()
    assert watched_replicas(apps, ns, 8) == {(NAME, 3), (CANARY, 1)}
    assert ledger.steps(p) == [(0, 25, "STARTED"), (0, 25, "PAUSED")]

    # One approver where the policy asks for two: refused, the log unchanged.
    size = ledger.client.head().size
    alone = kubectl_steward(
        kube_cluster, ledger, tmp_path, "resume", p.hex()[:10], "-n", ns, "--key", "alice.pem"
    )
    assert alone.returncode == 1, alone.stdout + alone.stderr
    assert "THRESHOLD_NOT_MET" in alone.stderr and "observed 1" in alone.stderr
    assert ledger.client.head().size == size
    assert deployments(apps, ns) == HELD

    resumed = kubectl_steward(
        kube_cluster,
        ledger,
        tmp_path,
        "resume",
        p.hex()[:10],
        "-n",
        ns,
        "--key",
        "alice.pem",
        "--key",
        "bob.pem",
        "--reason",
        "a noisy neighbour, not the model",
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    resumed_at = time.monotonic()
    # Resumed: no longer Paused at once, though the next step waits for its hold.
    wait_for(
        "Paused condition cleared",
        lambda: conditions(custom, ns, p).get("Paused", {}).get("status") == "False",
        30,
    )
    assert time.monotonic() - resumed_at < 9
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 90)
    # The resumed step dwelt its whole hold again before the rollout went on.
    assert time.monotonic() - resumed_at >= 9
    assert [phase for _s, _w, phase in ledger.steps(p)] == [
        "STARTED",
        "PAUSED",
        "ADVANCED",
        "ADVANCED",
        "PROMOTED",
    ]
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 60)
    assert deployments(apps, ns) == (4, 0)

    # The independent auditor verifies the whole story, pause and resume included.
    trust = tmp_path / "trust.json"
    write_trust_root(ledger.client, trust)
    audit = subprocess.run(
        [
            str(SCRIPTS / "steward-audit"),
            "verify",
            "--grpc",
            ledger.address,
            "--trust-root",
            str(trust),
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    report = json.loads(audit.stdout)
    assert report["findings"] == []
    history = kubectl_steward(kube_cluster, ledger, tmp_path, "history", p.hex()[:10], "-n", ns)
    assert "paused the rollout" in history.stdout and "resumed the rollout" in history.stdout
