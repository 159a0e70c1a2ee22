"""Traffic mode end to end: a real controller sets HTTPRoute weights on the real control plane
with the Gateway API CRDs installed (their schema validates every write).

No data plane runs here: no Gateway implementation forwards a request. What is tested is what the
controller writes, observed through Kubernetes WATCHES of the HTTPRoute and the canary
Deployment (never through the controller's own view). Events of both objects are ordered by
resourceVersion, which is etcd's revision: one global counter, so the order of writes across
the two objects is the order the API server committed them.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from controller.traffic import ROUTE_GROUP, ROUTE_PLURAL, ROUTE_VERSION, ObservedRoute
from controller.traffic import observed_route as parse_route
from infra.kube_cluster import LocalCluster
from infra.kube_workload import read_deployment
from infra.processes import wait_for
from ledger.formats import KillScope, TrafficRouting
from tests.e2e.conftest import FAST_PLAN, V2, Controllers, Ledger
from tests.e2e.test_kubectl_plugin import Kubectl

pytestmark = pytest.mark.kube

NAME = "model-server"
CANARY = "model-server-canary"
ROUTING = TrafficRouting(NAME, "model-server-stable", "model-server-canary", 8080)
N = 4


@dataclass(frozen=True)
class Seen:
    rv: int
    kind: str  # "route" or "canary"
    kind_of_event: str  # ADDED, MODIFIED, DELETED
    canary_weight: int | None = None  # route: the canary's weight, None if not our shape
    replicas: int | None = None  # canary: spec.replicas
    ready: int = 0  # canary: status.readyReplicas


@dataclass
class Recorder:
    """Watches the route and the canary Deployment from before the rollout starts."""

    api: client.ApiClient
    ns: str
    events: list[Seen] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    error: Exception | None = None

    def start(self) -> None:
        custom, apps = client.CustomObjectsApi(self.api), client.AppsV1Api(self.api)
        route_list = custom.list_namespaced_custom_object(
            ROUTE_GROUP, ROUTE_VERSION, self.ns, ROUTE_PLURAL
        )
        dep_list = apps.list_namespaced_deployment(self.ns)
        self._spawn(
            self._route_events,
            custom.list_namespaced_custom_object,
            dict(
                group=ROUTE_GROUP,
                version=ROUTE_VERSION,
                namespace=self.ns,
                plural=ROUTE_PLURAL,
                resource_version=route_list["metadata"]["resourceVersion"],
            ),
        )
        self._spawn(
            self._canary_events,
            apps.list_namespaced_deployment,
            dict(
                namespace=self.ns,
                field_selector=f"metadata.name={CANARY}",
                resource_version=dep_list.metadata.resource_version,
            ),
        )

    def _spawn(self, handle: Any, fn: Any, kwargs: dict[str, Any]) -> None:
        def run() -> None:
            try:
                follow()
            except Exception as exc:  # a watch that breaks fails the test, it does not hide
                self.error = exc

        def follow() -> None:
            rv = kwargs.pop("resource_version")
            while not self.stop.is_set():
                w = watch.Watch()
                for ev in w.stream(fn, resource_version=rv, timeout_seconds=5, **kwargs):
                    if ev["type"] == "ERROR":
                        raise RuntimeError(f"watch error: {ev['object']}")
                    obj = ev["object"]
                    rv = _rv(obj)
                    with self.lock:
                        self.events.append(handle(ev["type"], obj))
                    if self.stop.is_set():
                        w.stop()
                        return

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def _route_events(self, etype: str, obj: dict[str, Any]) -> Seen:
        route: ObservedRoute = parse_route(obj)
        return Seen(
            int(obj["metadata"]["resourceVersion"]),
            "route",
            etype,
            canary_weight=route.canary_weight(ROUTING),
        )

    def _canary_events(self, etype: str, obj: Any) -> Seen:
        return Seen(
            int(obj.metadata.resource_version),
            "canary",
            etype,
            replicas=obj.spec.replicas,
            ready=(obj.status.ready_replicas or 0) if obj.status else 0,
        )

    def ordered(self) -> list[Seen]:
        if self.error is not None:
            raise AssertionError(f"a watch of the recorder failed: {self.error!r}")
        with self.lock:
            return sorted(self.events, key=lambda s: s.rv)

    def weights(self) -> list[int]:
        """The canary weights the route went through, each change once, in order."""
        out: list[int] = []
        for s in self.ordered():
            if s.kind == "route" and s.canary_weight is not None and out[-1:] != [s.canary_weight]:
                out.append(s.canary_weight)
        return out

    def saw_canary_deleted(self) -> bool:
        """The watch has delivered the canary Deployment's deletion (the API server may have
        answered a GET without it before the watch caught up)."""
        return any(s.kind == "canary" and s.kind_of_event == "DELETED" for s in self.ordered())

    def live_weight(self) -> int | None:
        routes = [s for s in self.ordered() if s.kind == "route"]
        return routes[-1].canary_weight if routes else None


def _rv(obj: Any) -> str:
    return str(
        obj["metadata"]["resourceVersion"]
        if isinstance(obj, dict)
        else obj.metadata.resource_version
    )


def user_route(ns: str) -> dict[str, Any]:
    """The route the user owns: its parent Gateway, a path match, all traffic to their Service."""
    return {
        "apiVersion": f"{ROUTE_GROUP}/{ROUTE_VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": NAME, "namespace": ns},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1/predict"}}],
                    "backendRefs": [{"name": NAME, "port": 80}],
                }
            ],
        },
    }


@pytest.fixture
def traffic(
    ledger: Ledger,
    controllers: Controllers,
    kube_api_client: client.ApiClient,
    kube_namespace: str,
    gateway_api: str,
) -> Iterator[Recorder]:
    """The route created, the policy switched to traffic mode, the watches running."""
    custom = client.CustomObjectsApi(kube_api_client)
    custom.create_namespaced_custom_object(
        ROUTE_GROUP, ROUTE_VERSION, kube_namespace, ROUTE_PLURAL, user_route(kube_namespace)
    )
    ledger.ok(ledger.flow.policy(namespace=kube_namespace, plan=FAST_PLAN, traffic=ROUTING))
    rec = Recorder(kube_api_client, kube_namespace)
    rec.start()
    try:
        yield rec
    finally:
        rec.stop.set()


@pytest.fixture
def cli(kube_cluster: LocalCluster, ledger: Ledger, tmp_path: Path) -> Kubectl:
    """The built kubectl finding the kubectl-steward plugin on PATH (test_kubectl_plugin's)."""
    return Kubectl(kube_cluster, ledger, tmp_path)


def read_route(custom: client.CustomObjectsApi, ns: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(ROUTE_GROUP, ROUTE_VERSION, ns, ROUTE_PLURAL, NAME)


def test_route_weights_match_the_plan_at_every_step(
    ledger: Ledger,
    controllers: Controllers,
    traffic: Recorder,
    kube_api_client: client.ApiClient,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    apps, core = client.AppsV1Api(kube_api_client), client.CoreV1Api(kube_api_client)
    custom = client.CustomObjectsApi(kube_api_client)
    controllers.start()
    p, _ = ledger.approved(ns)
    wait_for("weight 50 at step 1", lambda: traffic.live_weight() == 50, 60)
    ledger.ok(ledger.flow.health(p, 1, True))
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 60)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 60)
    wait_for("the watch sees the canary deleted", traffic.saw_canary_deleted, 30)
    wait_for("weight back to the stable", lambda: traffic.live_weight() == 0, 30)

    # Every step's weight, in order, then all back to the stable: exactly the plan.
    assert traffic.weights() == [10, 50, 100, 0]
    assert ledger.steps(p) == [  # and no drift: the controller's own writes are not drift
        (0, 10, "STARTED"),
        (1, 50, "ADVANCED"),
        (2, 100, "ADVANCED"),
        (2, 100, "PROMOTED"),
    ]
    # Forward: each weight reached the route only after the canary was Ready at its share.
    ready_at = 0
    for s in traffic.ordered():
        if s.kind == "canary" and s.kind_of_event != "DELETED":
            ready_at = s.ready if s.replicas and s.ready >= s.replicas else 0
        elif s.kind == "route" and s.canary_weight:
            assert ready_at >= math.ceil(N * s.canary_weight / 100), (s, traffic.ordered())
    # The canary was deleted only after its weight went back to 0.
    deleted = next(s.rv for s in traffic.ordered() if s.kind_of_event == "DELETED")
    last_zero = max(s.rv for s in traffic.ordered() if s.kind == "route" and s.canary_weight == 0)
    assert last_zero < deleted

    # What the controller left: the user's match kept, the two Services selecting the tracks.
    rule = read_route(custom, ns)["spec"]["rules"][0]
    assert rule["matches"][0]["path"]["value"] == "/v1/predict"
    assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [
        ("model-server-stable", 100),
        ("model-server-canary", 0),
    ]
    stable_svc = core.read_namespaced_service("model-server-stable", ns)
    canary_svc = core.read_namespaced_service("model-server-canary", ns)
    assert stable_svc.spec.selector == {"app": NAME, "steward.dev/track": "stable"}
    assert canary_svc.spec.selector == {"app": NAME, "steward.dev/track": "canary"}
    stable = read_deployment(apps, ns, NAME)
    assert stable is not None and stable.spec.replicas == N
    assert stable.spec.template.metadata.labels["steward.dev/track"] == "stable"
    assert stable.spec.template.spec.containers[0].image == V2

    # After the promotion the canary is gone: a hand edit sending it weight is drift too.
    route = read_route(custom, ns)
    refs = route["spec"]["rules"][0]["backendRefs"]
    refs[0]["weight"], refs[1]["weight"] = 70, 30
    custom.patch_namespaced_custom_object(
        ROUTE_GROUP,
        ROUTE_VERSION,
        ns,
        ROUTE_PLURAL,
        NAME,
        {"spec": {"rules": route["spec"]["rules"]}},
        field_manager="kubectl-edit",
    )
    wait_for("drift recorded", lambda: (2, 100, "DRIFT_CORRECTED") in ledger.steps(p), 30)
    # The watch saw the edit and its correction (waiting on the live weight alone would pass
    # on the 0 from before the edit).
    wait_for("0, 30, then 0 again", lambda: traffic.weights()[-3:] == [0, 30, 0], 30)
    assert ledger.phase(p) == "PROMOTED"


def test_kill_switch_takes_the_weight_to_0_before_the_replicas(
    ledger: Ledger,
    controllers: Controllers,
    traffic: Recorder,
    kube_api_client: client.ApiClient,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    apps = client.AppsV1Api(kube_api_client)
    controllers.start()
    p, _ = ledger.approved(ns)
    wait_for("weight 50 at step 1", lambda: traffic.live_weight() == 50, 60)
    ledger.ok(ledger.flow.kill(KillScope("PROPOSAL", proposal=p)))
    wait_for("ROLLED_BACK", lambda: ledger.phase(p) == "ROLLED_BACK", 30)
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 30)
    wait_for("the watch sees the canary deleted", traffic.saw_canary_deleted, 30)
    wait_for("the watch sees weight 0", lambda: traffic.live_weight() == 0, 30)
    events = traffic.ordered()
    at_50 = max(s.rv for s in events if s.kind == "route" and s.canary_weight == 50)
    after = [s for s in events if s.rv > at_50]
    weight_0 = next(s.rv for s in after if s.kind == "route" and s.canary_weight == 0)
    replicas_0 = next(
        s.rv
        for s in after
        if s.kind == "canary" and (s.replicas == 0 or s.kind_of_event == "DELETED")
    )
    assert weight_0 < replicas_0, events
    assert ledger.steps(p)[-1] == (1, 0, "ROLLED_BACK")
    assert traffic.live_weight() == 0


def test_a_hand_edited_route_is_corrected_and_recorded(
    cli: Kubectl,
    ledger: Ledger,
    controllers: Controllers,
    traffic: Recorder,
    kube_api_client: client.ApiClient,
    kube_namespace: str,
) -> None:
    ns = kube_namespace
    custom = client.CustomObjectsApi(kube_api_client)
    controllers.start()
    p, _ = ledger.approved(ns)
    wait_for("weight 50 at step 1", lambda: traffic.live_weight() == 50, 60)
    # `kubectl steward get` shows the weight set and the weight the route gives each Service.
    got = cli.run("steward", "get", f"{NAME}-{p.hex()[:10]}", "-n", ns).stdout
    assert re.search(r"SetWeight:\s+50%", got), got
    assert re.search(r"ActualWeight:\s+50%", got), got
    assert re.search(
        r"Traffic:\s+HTTPRoute model-server: Service model-server-stable \(stable\) 50, "
        r"Service model-server-canary \(canary\) 50",
        got,
    ), got
    # Someone sends 80% to the canary by hand (the step's marker left as it was).
    route = read_route(custom, ns)
    rules = route["spec"]["rules"]
    rules[0]["backendRefs"][0]["weight"], rules[0]["backendRefs"][1]["weight"] = 20, 80
    custom.patch_namespaced_custom_object(
        ROUTE_GROUP,
        ROUTE_VERSION,
        ns,
        ROUTE_PLURAL,
        NAME,
        {"spec": {"rules": rules}},
        field_manager="kubectl-edit",
    )
    wait_for("drift recorded", lambda: (1, 50, "DRIFT_CORRECTED") in ledger.steps(p), 30)
    wait_for("50, 80, then 50 again", lambda: traffic.weights()[-3:] == [50, 80, 50], 30)
    drift = [
        e.body.payload
        for e in ledger.client.read(0)
        if getattr(e.body.payload, "phase", "") == "DRIFT_CORRECTED"
    ]
    assert len(drift) == 1 and drift[0].proposal == p
    assert "model-server-canary 80, expected model-server-stable 50" in drift[0].reason
    assert ledger.phase(p) == "ADVANCED"  # still held at step 1, waiting for its report
