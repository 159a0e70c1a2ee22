"""The controller end to end: real ledger server, real control plane with KWOK, real processes."""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.executor import EMERGENCY_STOP_ANNOTATION
from infra.kube_cluster import FAIL_IMAGE
from infra.kube_workload import read_deployment
from infra.processes import wait_for
from ledger.client import LedgerRpcError
from ledger.formats import ApprovalRecorded, KillScope, KillSwitchEngaged
from ledger.keys import PrivateKey
from tests.e2e.conftest import V1, V2, Controllers, Ledger

pytestmark = pytest.mark.kube

NAME = "model-server"
CANARY = "model-server-canary"
PROMOTED_STEPS = [
    (0, 10, "STARTED"),
    (1, 50, "ADVANCED"),
    (2, 100, "ADVANCED"),
    (2, 100, "PROMOTED"),
]


def replicas(apps: client.AppsV1Api, ns: str) -> tuple[int, int, str]:
    """(stable replicas, canary replicas, stable image); canary 0 when absent."""
    stable = read_deployment(apps, ns, NAME)
    canary = read_deployment(apps, ns, CANARY)
    assert stable is not None
    return (
        stable.spec.replicas,
        canary.spec.replicas if canary else 0,
        stable.spec.template.spec.containers[0].image,
    )


def canary_ready(apps: client.AppsV1Api, ns: str, n: int) -> bool:
    c = read_deployment(apps, ns, CANARY)
    return c is not None and c.spec.replicas == n and (c.status.ready_replicas or 0) >= n


def mirror(custom: client.CustomObjectsApi, ns: str, p: bytes) -> dict:
    return custom.get_namespaced_custom_object(
        "steward.dev", "v1alpha1", ns, "modelrollouts", f"{NAME}-{p.hex()[:10]}"
    )


def mirror_status(custom: client.CustomObjectsApi, ns: str, p: bytes) -> dict:
    try:
        return mirror(custom, ns, p).get("status") or {}
    except ApiException:
        return {}


def promote_with_health(ledger: Ledger, p: bytes, timeout: float = 40) -> None:
    """Report step 1 healthy once the rollout reaches it, then wait for PROMOTED."""
    wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p), timeout)
    ledger.ok(ledger.flow.health(p, 1, True))
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", timeout)


def test_full_rollout_promotes_the_candidate(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    custom: client.CustomObjectsApi,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p, _ = ledger.approved(ns)
    # Step 0 (10%: 1 canary, 3 stable) has no hold, so it may be passed before we look; step 1
    # (50%: 2 and 2) waits for a healthy report, so it is observable for sure.
    wait_for("STARTED", lambda: ledger.steps(p)[:1] == [(0, 10, "STARTED")])
    wait_for("50% (2/2)", lambda: replicas(apps, ns)[:2] == (2, 2) and canary_ready(apps, ns, 2))
    started = next(e for e in _entries(ledger) if getattr(e.body.payload, "phase", "") == "STARTED")
    assert started.body.payload.observed.stable_replicas == 4  # N as recorded, before the shift
    assert mirror_status(custom, ns, p).get("phase") == "Progressing"
    promote_with_health(ledger, p)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None)
    assert replicas(apps, ns) == (4, 0, V2)
    stable = read_deployment(apps, ns, NAME)
    assert stable is not None
    wait_for(
        "stable ready on v2",
        lambda: (read_deployment(apps, ns, NAME).status.ready_replicas or 0) >= 4,
    )
    assert ledger.steps(p) == PROMOTED_STEPS
    status = wait_for(
        "mirror Promoted",
        lambda: (s := mirror_status(custom, ns, p)).get("phase") == "Promoted" and s,
    )
    assert status["weight"] == 100 and status["approvals"] == 2
    assert status["lastSeq"] == ledger.state().last_seq[p]


def test_without_valid_approvals_the_canary_never_gets_a_replica(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    custom: client.CustomObjectsApi,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p = ledger.propose(ns)
    evals = ledger.evaluate(p)
    # The proposer's principal gets an approver key: its approval is still refused.
    own = PrivateKey.generate()
    ledger.ok(ledger.flow.grant_key(ledger.cast["agent"].principal, own, ("approver",)))
    with pytest.raises(LedgerRpcError) as info:
        ledger.ok(ledger.flow.signed_by_keys(ApprovalRecorded(p, "APPROVE", evals, "mine"), own))
    assert info.value.violation_code == "SELF_APPROVAL"
    ledger.approve(p, evals, "alice")
    # Bob approves, then a newer eval voids both approvals.
    ledger.approve(p, evals, "bob")
    newer = ledger.ok(ledger.flow.eval(p, "quality", 0.93))
    ledger.approve(p, (evals[0], newer), "bob")  # only bob's fresh approval is valid now
    status = wait_for(
        "mirror waiting for approvals",
        lambda: (s := mirror_status(custom, ns, p)).get("phase") == "Pending" and s,
    )
    time.sleep(2)
    assert read_deployment(apps, ns, CANARY) is None
    assert replicas(apps, ns) == (4, 0, V1)
    assert ledger.steps(p) == []
    assert "1 of 2" in mirror_status(custom, ns, p).get("message", "")
    assert status.get("approvals") in (0, 1)
    # The second fresh approval is what starts it.
    ledger.approve(p, (evals[0], newer), "alice")
    wait_for("canary at step 1", lambda: canary_ready(apps, ns, 2))


def test_kill_switch_removes_the_canary_and_release_needs_the_threshold(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    custom: client.CustomObjectsApi,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p, evals = ledger.approved(ns)
    wait_for("step 1 canary ready", lambda: canary_ready(apps, ns, 2))
    scope = KillScope("TARGET", ns, NAME)
    ledger.ok(ledger.flow.kill(scope))
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 15)
    wait_for("stable restored", lambda: replicas(apps, ns) == (4, 0, V1))
    wait_for("ROLLED_BACK", lambda: ledger.phase(p) == "ROLLED_BACK")
    assert ledger.steps(p)[-1] == (1, 0, "ROLLED_BACK")
    wait_for("mirror Killed", lambda: mirror_status(custom, ns, p).get("phase") == "Killed")
    # Releasing needs two approver principals; one is refused.
    with pytest.raises(LedgerRpcError) as info:
        ledger.ok(ledger.flow.release(scope, signers=("alice",)))
    assert info.value.violation_code == "THRESHOLD_NOT_MET"
    ledger.ok(ledger.flow.release(scope))
    time.sleep(2)
    assert read_deployment(apps, ns, CANARY) is None, "resumed without a fresh decision"
    ledger.approve(p, evals)
    wait_for(
        "restart on fresh approvals",
        lambda: (
            ledger.steps(p).count((0, 10, "STARTED")) == 2 and read_deployment(apps, ns, CANARY)
        ),
    )
    steps = ledger.steps(p)
    assert steps[:3] == [(0, 10, "STARTED"), (1, 50, "ADVANCED"), (1, 0, "ROLLED_BACK")]
    assert steps[3] == (0, 10, "STARTED")


def test_failing_canary_pods_roll_back(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p, _ = ledger.approved(ns, image=FAIL_IMAGE)
    wait_for("ROLLED_BACK", lambda: ledger.phase(p) == "ROLLED_BACK", 30)
    state = ledger.state()
    assert "CrashLoopBackOff" in state.rollouts[p].last_reason
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None)
    assert replicas(apps, ns) == (4, 0, V1)


def test_unhealthy_report_rolls_back(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p, _ = ledger.approved(ns)
    wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p))
    ledger.ok(ledger.flow.health(p, 1, False))
    wait_for("ROLLED_BACK", lambda: ledger.phase(p) == "ROLLED_BACK")
    assert "unhealthy" in ledger.state().rollouts[p].last_reason
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None)
    assert replicas(apps, ns) == (4, 0, V1)


def test_sigkill_at_each_phase_ends_like_an_uninterrupted_run(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    first = controllers.start("ctl-a")
    p, _ = ledger.approved(ns)
    wait_for("STARTED", lambda: ledger.steps(p)[:1] == [(0, 10, "STARTED")])
    first.kill()  # right after the record, maybe before the apply
    second = controllers.start("ctl-a")
    wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p))
    second.kill()
    ledger.ok(ledger.flow.health(p, 1, True))
    third = controllers.start("ctl-a")
    wait_for("last step", lambda: (2, 100, "ADVANCED") in ledger.steps(p), 30)
    third.kill()
    controllers.start("ctl-a")
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 30)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None)
    assert replicas(apps, ns) == (4, 0, V2)
    # Same story as an uninterrupted run: every step once, no drift, no rollback.
    assert ledger.steps(p) == PROMOTED_STEPS


def test_two_controllers_only_the_leader_writes_and_the_other_takes_over(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_namespace: str,
    kube_api_client: client.ApiClient,
) -> None:
    ns = kube_namespace
    coord = client.CoordinationV1Api(kube_api_client)
    a = controllers.start("ctl-a")
    wait_for("ctl-a leads", lambda: _holder(coord, ns) == "ctl-a")
    b = controllers.start("ctl-b")
    p, _ = ledger.approved(ns)
    wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p))
    assert a.actions() and not b.actions(), "the standby acted"
    a.kill()
    ledger.ok(ledger.flow.health(p, 1, True))
    wait_for("ctl-b takes the lease", lambda: _holder(coord, ns) == "ctl-b", 20)
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 30)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None)
    assert b.actions()
    assert ledger.steps(p) == PROMOTED_STEPS
    assert replicas(apps, ns) == (4, 0, V2)


def _holder(coord: client.CoordinationV1Api, ns: str) -> str:
    try:
        return coord.read_namespaced_lease("steward-controller", ns).spec.holder_identity or ""
    except ApiException:
        return ""


def test_emergency_stop_annotation_is_honoured_and_recorded(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    custom: client.CustomObjectsApi,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p, _ = ledger.approved(ns)
    wait_for("canary at step 1", lambda: canary_ready(apps, ns, 2))
    wait_for("mirror exists", lambda: mirror_status(custom, ns, p))
    controllers.cluster.kubectl(
        "annotate",
        "-n",
        ns,
        "modelrollout",
        f"{NAME}-{p.hex()[:10]}",
        f"{EMERGENCY_STOP_ANNOTATION}=latency spike",
    )
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 15)
    wait_for("ROLLED_BACK", lambda: ledger.phase(p) == "ROLLED_BACK")
    state = ledger.state()
    assert KillScope("PROPOSAL", proposal=p) in state.ledger.kill_switches
    kills = [e for e in _entries(ledger) if isinstance(e.body.payload, KillSwitchEngaged)]
    assert len(kills) == 1
    note = kills[0].body.payload.annotation
    assert note is not None and note.field_manager.startswith("kubectl")
    assert note.object == f"{ns}/{NAME}-{p.hex()[:10]}" and note.time
    assert replicas(apps, ns) == (4, 0, V1)


def _entries(ledger: Ledger) -> list:
    return list(ledger.client.read(0))


def test_hand_scaling_is_recorded_as_drift_and_corrected(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p, _ = ledger.approved(ns)
    wait_for("step 1 (2/2)", lambda: replicas(apps, ns)[:2] == (2, 2) and canary_ready(apps, ns, 2))
    controllers.cluster.kubectl("scale", "-n", ns, "deployment", NAME, "--replicas=6")
    wait_for("DRIFT_CORRECTED", lambda: (1, 50, "DRIFT_CORRECTED") in ledger.steps(p))
    wait_for("stable back at 2", lambda: replicas(apps, ns)[:2] == (2, 2))
    controllers.cluster.kubectl("set", "image", "-n", ns, f"deployment/{CANARY}", f"server={V1}")
    wait_for("second drift record", lambda: ledger.steps(p).count((1, 50, "DRIFT_CORRECTED")) == 2)
    wait_for(
        "canary back on v2",
        lambda: read_deployment(apps, ns, CANARY).spec.template.spec.containers[0].image == V2,
    )
    promote_with_health(ledger, p)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None)
    assert replicas(apps, ns) == (4, 0, V2)
