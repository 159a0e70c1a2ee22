"""The controller on real workloads, on the real control plane: a pod with two containers, a
HorizontalPodAutoscaler, the surge bound watched across a whole rollout, drift after promotion.

The HPA is a real ``autoscaling/v2`` object and the controller-manager's HPA controller does
the scaling: there is no metrics server here, so its metric never resolves and it only
enforces minReplicas/maxReplicas; raising ``minReplicas`` makes it scale the Deployment
through the scale subresource, which is the write Steward must follow and never fight.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, utils, watch
from kubernetes.client.rest import ApiException

from controller.executor import FIELD_MANAGER, ClusterCache, Executor
from controller.planner import ApplyCanary, Promote, ScaleStable
from controller.replay import Replayer
from infra.kube_workload import read_deployment
from infra.processes import wait_for
from ledger.store.sqlite import SQLiteLogStore
from tests.e2e.conftest import FAST_PLAN, V1, V2, Controllers, Ledger
from tests.e2e.test_controller_e2e import canary_ready, mirror_status, promote_with_health

pytestmark = pytest.mark.kube

NAME = "model-server"
CANARY = "model-server-canary"
LLM = "llm"  # the two-container workload
PROXY = "registry.example/proxy:1.4"


def two_container_deployment(name: str, image: str, replicas: int) -> dict[str, Any]:
    """The model server beside a proxy sidecar that has its own args and env."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "server", "image": image},
                        {
                            "name": "proxy",
                            "image": PROXY,
                            "args": ["--listen=:9000", "--upstream=127.0.0.1:8080"],
                            "env": [{"name": "PROXY_MODE", "value": "strict"}],
                        },
                    ]
                },
            },
        },
    }


def containers_of(d: Any) -> list[dict[str, Any]]:
    return [c.to_dict() for c in d.spec.template.spec.containers]


@pytest.fixture
def llm(kube_namespace: str, kube_api_client: client.ApiClient, apps: client.AppsV1Api) -> str:
    utils.create_from_dict(
        kube_api_client, two_container_deployment(LLM, V1, 4), namespace=kube_namespace
    )
    wait_for(
        "4 ready llm pods",
        lambda: (
            (apps.read_namespaced_deployment(LLM, kube_namespace).status.ready_replicas or 0) >= 4
        ),
    )
    return LLM


def approved_for(ledger: Ledger, ns: str, deployment: str) -> bytes:
    p = ledger.propose(ns, V2, deployment=deployment)
    ledger.approve(p, ledger.evaluate(p))
    return p


# -- two containers ------------------------------------------------------------------------------


def test_two_containers_and_no_name_in_the_policy_wait_naming_them(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    custom: client.CustomObjectsApi,
    kube_namespace: str,
    llm: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p = approved_for(ledger, ns, llm)
    status = wait_for(
        "the ModelRollout says why it waits",
        lambda: (
            (s := _mirror_status(custom, ns, llm, p)).get("message", "").find("2 containers") >= 0
            and s
        ),
    )
    assert "(server, proxy)" in status["message"] and "policy must name" in status["message"]
    assert status["phase"] == "Pending"
    assert read_deployment(apps, ns, f"{llm}-canary") is None
    assert ledger.steps(p) == []


def test_the_executor_updates_the_named_container_and_leaves_the_other_alone(
    tmp_path: Path,
    ledger: Ledger,
    kube_api_client: client.ApiClient,
    apps: client.AppsV1Api,
    kube_namespace: str,
    crd_installed: None,
    llm: str,
) -> None:
    """The writes themselves, against the API server: apply of the canary, the stable's
    scale-down and the promotion each touch `server` only; `proxy` keeps args and env."""
    ns = kube_namespace
    stop = threading.Event()
    cache = ClusterCache(kube_api_client, [ns])
    cache.start(stop)
    store = SQLiteLogStore(ledger.db)
    try:
        assert cache.wait_synced(30)
        executor = Executor(
            kube_api_client, cache, Replayer(store), ledger.client, ledger.cast["controller"].key
        )
        proxy_before = containers_of(apps.read_namespaced_deployment(llm, ns))[1]
        proposal = b"\x07" * 32
        outcomes = executor.execute(
            [
                ApplyCanary(ns, llm, 2, V2, proposal, "m/0/0", "server"),
                ScaleStable(ns, llm, 2, V1, "m/0/0", "server"),
            ]
        )
        assert all(o.ok for o in outcomes), outcomes
        canary = apps.read_namespaced_deployment(f"{llm}-canary", ns)
        assert [c["image"] for c in containers_of(canary)] == [V2, PROXY]
        assert containers_of(canary)[1] == proxy_before
        (promoted,) = executor.execute([Promote(ns, llm, 4, V2, "m/0/promoted", "server")])
        assert promoted.ok, promoted
        stable = apps.read_namespaced_deployment(llm, ns)
        assert stable.spec.replicas == 4
        assert [c["image"] for c in containers_of(stable)] == [V2, PROXY]
        assert containers_of(stable)[1] == proxy_before
        # No container to name (a stop after the policy's container vanished): the count
        # alone, and the images stay as they are (no apply that would drop the image field).
        (count_only,) = executor.execute([ScaleStable(ns, llm, 3, "", "m/0/rb", None)])
        assert count_only.ok, count_only
        stable = apps.read_namespaced_deployment(llm, ns)
        assert stable.spec.replicas == 3
        assert [c["image"] for c in containers_of(stable)] == [V2, PROXY]
        # A name the pod does not have is refused, naming the containers it has.
        (missing,) = executor.execute([ApplyCanary(ns, llm, 2, V2, proposal, "m/0/1", "model")])
        assert not missing.ok
        assert missing.detail == (
            f"container 'model' not found in Deployment {ns}/{llm} (containers: server, proxy)"
        )
    finally:
        stop.set()
        store.close()


def test_the_policy_names_the_container_and_the_rollout_promotes(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_namespace: str,
    llm: str,
) -> None:
    ns = kube_namespace
    ledger.ok(ledger.flow.policy(namespace=ns, plan=FAST_PLAN, container="server"))
    controllers.start()
    p = approved_for(ledger, ns, llm)
    wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p), 40)
    ledger.ok(ledger.flow.health(p, 1, True))
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 40)
    wait_for("canary removed", lambda: read_deployment(apps, ns, f"{llm}-canary") is None)
    stable = apps.read_namespaced_deployment(llm, ns)
    assert [c["image"] for c in containers_of(stable)] == [V2, PROXY]


def _mirror_status(custom: client.CustomObjectsApi, ns: str, name: str, p: bytes) -> dict:
    try:
        obj = custom.get_namespaced_custom_object(
            "steward.dev", "v1alpha1", ns, "modelrollouts", f"{name}-{p.hex()[:10]}"
        )
    except ApiException:
        return {}
    return obj.get("status") or {}


# -- HPA -----------------------------------------------------------------------------------------


def test_a_target_scaled_by_a_real_hpa_is_followed_never_fought(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_api_client: client.ApiClient,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    autoscaling = client.AutoscalingV2Api(kube_api_client)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(
        ns,
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": NAME},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
                "minReplicas": 4,
                "maxReplicas": 10,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 60},
                        },
                    }
                ],
            },
        },
    )
    controllers.start()
    p, _ = ledger.approved(ns)
    wait_for("step 1 (50%)", lambda: (1, 50, "ADVANCED") in ledger.steps(p), 40)
    wait_for("canary 2 ready", lambda: canary_ready(apps, ns, 2), 40)
    assert apps.read_namespaced_deployment(NAME, ns).spec.replicas == 4  # the stable keeps N
    # The HPA controller scales the stable to 6 through the scale subresource.
    autoscaling.patch_namespaced_horizontal_pod_autoscaler(NAME, ns, {"spec": {"minReplicas": 6}})
    wait_for(
        "the HPA scales the stable to 6",
        lambda: apps.read_namespaced_deployment(NAME, ns).spec.replicas == 6,
        90,
    )
    wait_for("the canary follows: 3 of 6 at 50%", lambda: canary_ready(apps, ns, 3), 40)
    ledger.ok(ledger.flow.health(p, 1, True))
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 40)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 40)
    stable = apps.read_namespaced_deployment(NAME, ns)
    assert (stable.spec.replicas, stable.spec.template.spec.containers[0].image) == (6, V2)
    assert [s for s in ledger.steps(p) if s[2] == "DRIFT_CORRECTED"] == []
    # Who wrote spec.replicas: the HPA (through the scale subresource), never Steward.
    owners = replica_owners(stable)
    assert owners and all(manager != FIELD_MANAGER for manager, _ in owners), owners
    assert any(sub == "scale" for _, sub in owners), owners
    mine = [e for e in stable.metadata.managed_fields if e.manager == FIELD_MANAGER]
    assert mine, "Steward wrote the image and its marker"


def replica_owners(d: Any) -> list[tuple[str, str]]:
    """(manager, subresource) of each managedFields entry that owns spec.replicas."""
    return [
        (e.manager, e.subresource or "")
        for e in d.metadata.managed_fields or []
        if "f:replicas" in ((e.fields_v1 or {}).get("f:spec") or {})
    ]


# -- surge ---------------------------------------------------------------------------------------


@dataclass
class ReadyWatch:
    """Sums readyReplicas over the target's ReplicaSets at every change a watch delivers."""

    apps: client.AppsV1Api
    namespace: str
    selector: str
    ready: dict[str, int] = field(default_factory=dict)
    sums: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        listed = self.apps.list_namespaced_replica_set(self.namespace, label_selector=self.selector)
        for rs in listed.items:
            self.ready[rs.metadata.name] = rs.status.ready_replicas or 0
        self.sums.append(sum(self.ready.values()))
        thread = threading.Thread(
            target=self._run, args=(listed.metadata.resource_version,), daemon=True
        )
        thread.start()
        return thread

    def _run(self, rv: str) -> None:
        try:
            while not self.stop.is_set():
                w = watch.Watch()
                for event in w.stream(
                    self.apps.list_namespaced_replica_set,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=rv,
                    timeout_seconds=5,
                ):
                    rs = event["object"]
                    rv = rs.metadata.resource_version
                    if event["type"] == "DELETED":
                        self.ready.pop(rs.metadata.name, None)
                    else:
                        self.ready[rs.metadata.name] = rs.status.ready_replicas or 0
                    self.sums.append(sum(self.ready.values()))
                    if self.stop.is_set():
                        w.stop()
                        break
        except BaseException as exc:  # a 410 would lose changes: the test must fail, not pass
            self.error = exc


def test_ready_replicas_never_drop_below_n_across_a_whole_rollout(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    watcher = ReadyWatch(apps, ns, f"app={NAME}")
    thread = watcher.start()
    assert watcher.sums == [4]
    controllers.start()
    p, _ = ledger.approved(ns)
    promote_with_health(ledger, p)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 40)
    wait_for("stable ready on v2", lambda: _stable_ready_on(apps, ns, V2), 40)
    wait_for("the watch saw the end", lambda: watcher.sums[-1] == 4 and len(watcher.ready) >= 1)
    watcher.stop.set()
    thread.join(timeout=10)
    assert watcher.error is None, watcher.error
    assert min(watcher.sums) >= 4, watcher.sums
    assert max(watcher.sums) > 4, "the canary never ran beside the full stable (no surge)"
    assert len(watcher.sums) > 10, watcher.sums  # it watched the whole rollout


def _stable_ready_on(apps: client.AppsV1Api, ns: str, image: str) -> bool:
    d = apps.read_namespaced_deployment(NAME, ns)
    return (
        d.spec.template.spec.containers[0].image == image
        and (d.status.ready_replicas or 0) >= 4
        and (d.status.updated_replicas or 0) >= 4
    )


# -- drift after promotion -----------------------------------------------------------------------


def test_hand_changes_after_promotion_are_recorded_and_corrected(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    custom: client.CustomObjectsApi,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    controllers.start()
    p, _ = ledger.approved(ns)
    promote_with_health(ledger, p)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 40)
    controllers.cluster.kubectl("set", "image", "-n", ns, f"deployment/{NAME}", f"server={V1}")
    wait_for("DRIFT_CORRECTED", lambda: ledger.steps(p)[-1] == (2, 100, "DRIFT_CORRECTED"), 30)
    wait_for(
        "stable back on v2",
        lambda: (
            apps.read_namespaced_deployment(NAME, ns).spec.template.spec.containers[0].image == V2
        ),
    )
    assert ledger.phase(p) == "PROMOTED"
    reason = next(
        e.body.payload.reason
        for e in ledger.client.read(0)
        if getattr(e.body.payload, "phase", "") == "DRIFT_CORRECTED"
    )
    assert reason == f"{NAME}: image {V1}, expected {V2} (promoted)"
    assert mirror_status(custom, ns, p).get("phase") == "Promoted"
    # A hand scale is drift too (no HPA owns this count): a second record, back to N.
    controllers.cluster.kubectl("scale", "-n", ns, "deployment", NAME, "--replicas=6")
    wait_for(
        "second DRIFT_CORRECTED",
        lambda: ledger.steps(p).count((2, 100, "DRIFT_CORRECTED")) == 2,
        30,
    )
    wait_for("back at 4", lambda: apps.read_namespaced_deployment(NAME, ns).spec.replicas == 4)
    stable = apps.read_namespaced_deployment(NAME, ns)
    assert stable.spec.template.spec.containers[0].image == V2
    assert ledger.phase(p) == "PROMOTED"
