# The kubernetes client types every model field as Optional; a None here is a test failure.
# mypy: disable-error-code="union-attr"
"""The local control plane behaves like a real cluster, and k8s/ installs and is least-privilege.

Everything runs against the real etcd + kube-apiserver + controller-manager + scheduler + KWOK
started by the ``kube_cluster`` fixture, with the kubectl built alongside them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from infra.kube_build import KUBE_VERSION
from infra.kube_cluster import FAIL_IMAGE, LocalCluster
from infra.kube_workload import deployment_manifest
from infra.processes import wait_for

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CONTROLLER_SA = "system:serviceaccount:steward-system:steward-controller"
PROPOSAL = "ab" * 32


def pods_of(core: client.CoreV1Api, ns: str, app: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(ns, label_selector=f"app={app}").items)


def is_ready(pod: client.V1Pod) -> bool:
    conds = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conds)


@pytest.fixture(scope="module")
def steward_installed(kube_cluster: LocalCluster) -> Iterator[str]:
    """``kubectl apply -k k8s/`` once for the module; returns kubectl's output."""
    out = kube_cluster.kubectl("apply", "-k", str(K8S)).stdout
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/modelrollouts.steward.dev"
    )
    yield out


def test_server_is_the_version_we_built(kube_cluster: LocalCluster) -> None:
    info = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert info["serverVersion"]["gitVersion"] == KUBE_VERSION
    assert info["clientVersion"]["gitVersion"] == KUBE_VERSION
    nodes = json.loads(kube_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert len(nodes) == kube_cluster.nodes
    for node in nodes:
        assert node["metadata"]["labels"]["type"] == "kwok"
        assert not node["spec"].get("taints"), "KWOK nodes must be schedulable"


def test_sample_deployment_becomes_available_then_rolls_on_image_change(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("apply", "-k", str(K8S / "sample"), "-n", ns)

    def available() -> client.V1Deployment | None:
        d = apps.read_namespaced_deployment("model-server", ns)
        conds = {c.type: c.status for c in d.status.conditions or []}
        ok = d.status.ready_replicas == 4 and d.status.available_replicas == 4
        return d if ok and conds.get("Available") == "True" else None

    wait_for("model-server to be Available with 4 ready replicas", available, 60, every=0.5)
    pods = pods_of(core, ns, "model-server")
    assert len(pods) == 4
    assert all(is_ready(p) for p in pods)
    assert all(p.spec.node_name and p.spec.node_name.startswith("kwok-node-") for p in pods)
    svc = core.read_namespaced_service("model-server", ns)
    assert svc.spec.selector == {"app": "model-server"}

    old_rs = {rs.metadata.name for rs in apps.list_namespaced_replica_set(ns).items}
    assert len(old_rs) == 1
    kube_cluster.kubectl(
        "set",
        "image",
        "deployment/model-server",
        "server=example.com/models/model-server:v2",
        "-n",
        ns,
    )

    def rolled() -> list[client.V1ReplicaSet] | None:
        d = apps.read_namespaced_deployment("model-server", ns)
        sets = apps.list_namespaced_replica_set(ns).items
        new = [rs for rs in sets if rs.metadata.name not in old_rs]
        done = (
            d.status.observed_generation == d.metadata.generation
            and d.status.updated_replicas == 4
            and d.status.ready_replicas == 4
            and (d.status.replicas or 0) == 4
            and len(new) == 1
            and new[0].status.ready_replicas == 4
        )
        return sets if done else None

    sets = wait_for("a new ReplicaSet to take over all 4 replicas", rolled, 90, every=0.5)
    by_name = {rs.metadata.name: rs for rs in sets}
    (old,) = old_rs
    assert by_name[old].spec.replicas == 0
    new_rs = next(rs for name, rs in by_name.items() if name != old)
    assert new_rs.spec.template.spec.containers[0].image.endswith(":v2")
    # Old pods really go away (KWOK's pod-delete stage), leaving 4 pods of the new image.
    wait_for(
        "old pods to be deleted", lambda: len(pods_of(core, ns, "model-server")) == 4, 60, every=0.5
    )
    images = {p.spec.containers[0].image for p in pods_of(core, ns, "model-server")}
    assert images == {"example.com/models/model-server:v2"}


def test_failing_image_pods_crashloop_and_never_become_ready(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
) -> None:
    ns = kube_namespace
    kube_cluster.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps(deployment_manifest("broken", FAIL_IMAGE, 2, container="app")),
    )

    def crashlooping() -> list[client.V1Pod] | None:
        pods = pods_of(core, ns, "broken")
        if len(pods) != 2:
            return None
        for p in pods:
            waiting = [
                s.state.waiting
                for s in p.status.container_statuses or []
                if s.state and s.state.waiting
            ]
            if p.status.phase != "Running" or not waiting:
                return None
            if any(w.reason != "CrashLoopBackOff" for w in waiting):
                return None
        return pods

    first = wait_for(
        "pods of the failing image to be in CrashLoopBackOff", crashlooping, 60, every=0.5
    )
    assert not any(is_ready(p) for p in first)
    # Phase stays Running, so the ReplicaSet keeps these pods instead of churning new ones.
    time.sleep(3)
    again = pods_of(core, ns, "broken")
    assert {p.metadata.name for p in again} == {p.metadata.name for p in first}
    d = apps.read_namespaced_deployment("broken", ns)
    assert not d.status.ready_replicas
    assert d.status.unavailable_replicas == 2


def test_apply_k8s_installs_steward_and_modelrollouts_print_columns(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    steward_installed: str,
) -> None:
    for obj in (
        "customresourcedefinition.apiextensions.k8s.io/modelrollouts.steward.dev",
        "serviceaccount/steward-controller",
        "statefulset.apps/steward-ledger",
        "deployment.apps/steward-controller",
        "service/steward-ledger",
        "service/steward-controller",
        "networkpolicy.networking.k8s.io/steward-ledger",
    ):
        assert obj in steward_installed
    for kind, name in (("statefulset", "steward-ledger"), ("deployment", "steward-controller")):
        dep = json.loads(
            kube_cluster.kubectl("get", kind, name, "-n", "steward-system", "-o", "json").stdout
        )
        probe = dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        # The ledger serves mutual TLS on 7443, which kubelet's gRPC probe cannot speak; it
        # answers health alone, plaintext, on 7445 (--health-listen).
        assert probe["grpc"]["port"] == (7445 if name == "steward-ledger" else 7444)

    ns = kube_namespace
    rollout = {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "model-server-rollout"},
        "spec": {
            "proposal": PROPOSAL,
            "target": "model-server",
            "candidateImage": "example.com/models/model-server:v2",
        },
    }
    kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(rollout))
    status = {
        "status": {
            "phase": "Progressing",
            "step": 2,
            "weight": 25,
            "approvals": 2,
            "lastSeq": 41,
            "message": "holding at 25%",
        }
    }
    kube_cluster.kubectl(
        "patch",
        "modelrollout",
        "model-server-rollout",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )

    table = kube_cluster.kubectl("get", "modelrollouts", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "PROPOSAL", "PHASE", "STEP", "WEIGHT", "AGE"]
    row = table[1].split()
    assert row[:5] == ["model-server-rollout", PROPOSAL, "Progressing", "2", "25"]

    # The schema refuses a proposal that is not a hex hash.
    bad = dict(rollout, metadata={"name": "bad"}, spec=dict(rollout["spec"], proposal="nope"))  # type: ignore[arg-type]
    out = kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and "spec.proposal" in out.stderr


def can_i(cluster: LocalCluster, verb: str, resource: str, ns: str | None) -> bool:
    # "deployments.apps/scale" means a subresource here (kubectl would read it as a name).
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={CONTROLLER_SA}"]
    args += [f"--subresource={sub}"] if sub else []
    args += ["-n", ns] if ns else ["--all-namespaces"]
    out = cluster.kubectl(*args, check=False)
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


ALLOWED = [
    *[(v, "deployments.apps") for v in ("get", "list", "watch", "create", "patch", "delete")],
    *[(v, "pods") for v in ("get", "list", "watch")],
    *[(v, "services") for v in ("get", "list", "watch", "create", "patch")],
    *[(v, "httproutes.gateway.networking.k8s.io") for v in ("get", "list", "watch", "patch")],
    ("get", "deployments.apps/scale"),
    *[(v, "horizontalpodautoscalers.autoscaling") for v in ("get", "list", "watch")],
    *[
        (v, "modelrollouts.steward.dev")
        for v in ("get", "list", "watch", "create", "patch", "update")
    ],
    *[(v, "modelrollouts.steward.dev/status") for v in ("get", "patch", "update")],
    ("create", "events"),
    ("create", "events.events.k8s.io"),
]
FORBIDDEN = [
    ("update", "deployments.apps"),
    ("patch", "deployments.apps/scale"),
    ("update", "deployments.apps/scale"),
    ("patch", "horizontalpodautoscalers.autoscaling"),
    ("create", "pods"),
    ("delete", "services"),
    ("update", "services"),
    ("create", "httproutes.gateway.networking.k8s.io"),
    ("delete", "httproutes.gateway.networking.k8s.io"),
    ("update", "httproutes.gateway.networking.k8s.io"),
    ("delete", "pods"),
    ("get", "secrets"),
    ("delete", "secrets"),
    ("list", "configmaps"),
    ("delete", "modelrollouts.steward.dev"),
    ("create", "leases.coordination.k8s.io"),  # only in steward-system, below
    ("create", "roles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
]


def test_controller_rbac_allows_exactly_what_it_needs(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    steward_installed: str,
    gateway_api: str,  # HTTPRoute served, so can-i resolves the traffic-mode rights
) -> None:
    ns = kube_namespace
    refused_but_needed = [(v, r) for v, r in ALLOWED if not can_i(kube_cluster, v, r, ns)]
    assert refused_but_needed == []
    granted_but_forbidden = [(v, r) for v, r in FORBIDDEN if can_i(kube_cluster, v, r, ns)]
    assert granted_but_forbidden == []

    # Leader election: the Lease only in its own namespace, and never deleted.
    for verb in ("get", "create", "update"):
        assert can_i(kube_cluster, verb, "leases.coordination.k8s.io", "steward-system")
    assert not can_i(kube_cluster, "delete", "leases.coordination.k8s.io", "steward-system")
    assert not can_i(kube_cluster, "get", "secrets", "steward-system")

    # A real request as the service account is refused by the API server, not just by can-i.
    out = kube_cluster.kubectl(
        "delete", "secret", "anything", "-n", ns, f"--as={CONTROLLER_SA}", check=False
    )
    assert out.returncode != 0 and "Forbidden" in out.stderr
    # And an allowed one goes through: a server-side apply that creates a canary Deployment.
    canary = deployment_manifest(
        "model-server-canary", "example.com/models/model-server:v2", 1, container="app"
    )
    kube_cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=steward-controller",
        "-n",
        ns,
        f"--as={CONTROLLER_SA}",
        "-f",
        "-",
        input=json.dumps(canary),
    )
    kube_cluster.kubectl(
        "delete", "deployment", "model-server-canary", "-n", ns, f"--as={CONTROLLER_SA}"
    )
