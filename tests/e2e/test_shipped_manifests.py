"""The shipped manifests, run as shipped, from the wheel a platform team would install.

``kubectl kustomize k8s/`` is applied to the local control plane, and tests/helpers/pod_runner.py
plays the kubelet: every pod of the StatefulSet and the Deployment runs as a process from the
wheel's virtual environment (tests/helpers/wheel_env.py), with the manifest's command, args,
env, Secrets and ConfigMaps at their mount paths, the ledger's log on a PersistentVolumeClaim
bound to a hostPath PersistentVolume, and the controller on in-cluster config: the token the
TokenRequest API gives its ServiceAccount, so it has exactly the rights k8s/base/rbac.yaml
grants. The test talks to the ledger as an operator would, through a port-forward, with an
admin client certificate over mutual TLS.

- from genesis to a kill switch, its release and a promoted rollout; the ledger pod deleted and
  recreated keeps every event (the claim outlives it); the controller's metrics are scraped;
  no container ever exited (a manifest whose args a program rejects fails here);
- a controller argument the program does not know: its pods crash-loop with exit status 2;
- the ClusterRole without ``patch`` on Deployments: the controller cannot start the canary.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes import client, utils

from controller.state import ControllerState
from infra.certificates import certificate, common_name, pem_certificate, pem_key
from infra.kube_cluster import LocalCluster
from infra.kube_workload import read_deployment, target_manifests
from infra.processes import wait_for
from ledger.client import LedgerClient, LedgerRpcError
from ledger.formats import KillScope, PlanStep, SignedEvent, decode_log_entry
from ledger.scenario import Cast, Flow, followed_state
from ledger.store.sqlite import SQLiteLogStore
from tests.helpers.pod_runner import PodRunner
from tests.helpers.wheel_env import WheelEnvironment, installed_wheel

pytestmark = [pytest.mark.kube, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "steward-system"
LEDGER_HOST = "steward-ledger.steward-system.svc"
V1, V2, V3 = (f"registry.example/model-server:v{n}" for n in (1, 2, 3))
FAST_PLAN = (PlanStep(10, 0, False), PlanStep(50, 1, True), PlanStep(100, 0, False))
START = 180.0  # seconds for the pods to start from the wheel on a loaded machine


@pytest.fixture(scope="module")
def wheel() -> WheelEnvironment:
    return installed_wheel()


# --------------------------------------------------------------------------------------------
# The operator's side: certificates, Secrets, the ConfigMap, a volume for the claim


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_tls(directory: Path) -> None:
    """A CA; the ledger's server certificate for its Service names (and loopback, for a
    port-forward); client certificates for the controller and an admin."""
    directory.mkdir(parents=True)
    ca_key, ca_name = _key(), common_name("steward install test CA")
    ca = certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    (directory / "ca.crt").write_bytes(pem_certificate(ca))
    names = [LEDGER_HOST, "steward-ledger.steward-system", "steward-ledger", "localhost"]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    for who, extra, usage in (
        ("ledger", sans, ExtendedKeyUsageOID.SERVER_AUTH),
        ("steward-controller", [], ExtendedKeyUsageOID.CLIENT_AUTH),
        ("steward-admin", [], ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = _key()
        cert = certificate(common_name(who), key, ca_name, ca_key, sans=extra, usage=[usage])
        (directory / f"{who}.crt").write_bytes(pem_certificate(cert))
        (directory / f"{who}.key").write_bytes(pem_key(key))


@dataclass
class Installed:
    runner: PodRunner
    cluster: LocalCluster
    cast: Cast
    tls: Path
    pv_dir: Path
    namespace: str  # the target's

    def ledger_client(self) -> LedgerClient:
        address = self.runner.forward(SYSTEM, "steward-ledger", 7443)
        return LedgerClient(
            address,
            ca_file=self.tls / "ca.crt",
            cert_file=self.tls / "steward-admin.crt",
            key_file=self.tls / "steward-admin.key",
            server_name=LEDGER_HOST,
            timeout=30,
        )

    def state(self) -> ControllerState:
        """The log as the ledger keeps it on its volume (the claim's hostPath)."""
        store = SQLiteLogStore(self.pv_dir / "ledger.db")
        try:
            cs = ControllerState()
            for record in store.read():
                cs.fold(decode_log_entry(record.value))
            return cs
        finally:
            store.close()


def kubectl(cluster: LocalCluster, *args: str, input: str | None = None) -> str:
    return cluster.kubectl(*args, input=input).stdout


def install(
    cluster: LocalCluster, wheel: WheelEnvironment, tmp: Path, namespace: str, kustomization: Path
) -> Installed:
    """What docs/INSTALL.md has an operator do, with the harness as the nodes' kubelet."""
    cast = Cast.create()
    tls = tmp / "tls"
    write_tls(tls)
    keys = tmp / "keys"
    keys.mkdir()
    cast.checkpoint_key.save(keys / "checkpoint.key")
    cast["controller"].key.save(keys / "controller.key")
    # The volume a provisioner would make: owned by the pod's fsGroup user, bound to the claim.
    pv_dir = tmp / "pv"
    pv_dir.mkdir()
    os.chown(pv_dir, 10001, 10001)
    pv = f"steward-ledger-test-{uuid.uuid4().hex[:8]}"
    manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv, "labels": {"steward.dev/test": "shipped-manifests"}},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(pv_dir), "type": "Directory"},
            "claimRef": {"namespace": SYSTEM, "name": "data-steward-ledger-0"},
        },
    }
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(manifest))
    rendered = kubectl(cluster, "kustomize", str(kustomization))
    kubectl(cluster, "apply", "-f", "-", input=rendered)
    secret = ("-n", SYSTEM, "create", "secret", "generic")
    kubectl(
        cluster,
        *secret,
        "steward-ledger-key",
        f"--from-file=checkpoint.key={keys / 'checkpoint.key'}",
    )
    kubectl(
        cluster,
        *secret,
        "steward-controller-key",
        f"--from-file=controller.key={keys / 'controller.key'}",
    )
    for name, who in (
        ("steward-ledger-tls", "ledger"),
        ("steward-controller-tls", "steward-controller"),
    ):
        kubectl(
            cluster,
            *secret,
            name,
            f"--from-file=tls.crt={tls / f'{who}.crt'}",
            f"--from-file=tls.key={tls / f'{who}.key'}",
            f"--from-file=ca.crt={tls / 'ca.crt'}",
        )
    kubectl(
        cluster,
        "-n",
        SYSTEM,
        "create",
        "configmap",
        "steward-controller",
        f"--from-literal=namespaces={namespace}",
    )
    runner = PodRunner(cluster, wheel, tmp / "node", (SYSTEM,)).start()
    return Installed(runner, cluster, cast, tls, pv_dir, namespace)


def uninstall(cluster: LocalCluster) -> None:
    """Remove steward-system and the test's volume, so the next install starts empty; the
    cluster-wide objects are put back as shipped."""
    cluster.kubectl("delete", "namespace", SYSTEM, "--wait=false", check=False)
    wait_for(
        "steward-system deleted",
        lambda: cluster.kubectl("get", "namespace", SYSTEM, check=False).returncode != 0,
        120,
    )
    cluster.kubectl("delete", "pv", "-l", "steward.dev/test=shipped-manifests", check=False)
    cluster.kubectl("apply", "-f", str(REPO / "k8s" / "base" / "rbac.yaml"), check=False)


@pytest.fixture
def installs(
    kube_cluster: LocalCluster, wheel: WheelEnvironment, tmp_path: Path, kube_namespace: str
) -> Iterator[object]:
    made: list[Installed] = []

    def make(kustomization: Path = REPO / "k8s") -> Installed:
        done = install(kube_cluster, wheel, tmp_path, kube_namespace, kustomization)
        made.append(done)
        return done

    uninstall(kube_cluster)  # whatever an earlier test (test_kube_cluster's apply) left
    try:
        yield make
    finally:
        for done in made:
            done.runner.stop()
        uninstall(kube_cluster)


def overlay(tmp: Path, patches: list[tuple[dict[str, str], list[dict[str, object]]]]) -> Path:
    """A kustomization over the shipped k8s/ with JSON patches, as an operator's site overlay."""
    directory = tmp / "overlay"
    directory.mkdir()
    entries = []
    for i, (target, ops) in enumerate(patches):
        (directory / f"patch-{i}.json").write_text(json.dumps(ops))
        entries.append({"path": f"patch-{i}.json", "target": target})
    # Kustomize takes a base directory anywhere, but only by a relative path.
    base = os.path.relpath(REPO / "k8s", directory)
    (directory / "kustomization.yaml").write_text(
        json.dumps({"resources": [base], "patches": entries})
    )
    return directory


# --------------------------------------------------------------------------------------------
# The story


def pods_running(inst: Installed) -> None:
    wait_for(
        "the ledger and both controller replicas running from the wheel",
        lambda: (
            len(inst.runner.running(SYSTEM, "steward-ledger-")) == 1
            and len(inst.runner.running(SYSTEM, "steward-controller-")) == 2
        ),
        START,
    )


def ready_ledger(inst: Installed) -> LedgerClient:
    ledger = inst.ledger_client()
    wait_for(
        "the ledger answering through the port-forward",
        lambda: _answers(ledger),
        START,
    )
    return ledger


def _answers(ledger: LedgerClient) -> bool:
    try:
        ledger.head()
        return True
    except LedgerRpcError:
        return False


def test_shipped_manifests_run_from_genesis_to_a_kill_switch_and_a_promotion(
    installs,
    apps: client.AppsV1Api,
    kube_api_client: client.ApiClient,  # type: ignore[no-untyped-def]
) -> None:
    inst: Installed = installs()
    ns, runner = inst.namespace, inst.runner
    pods_running(inst)
    ledger = ready_ledger(inst)
    flow = Flow(
        inst.cast,
        ledger="prod",
        origin="example.org/steward/prod",
        state=followed_state(ledger.read),
    )

    def ok(event: SignedEvent) -> bytes:
        return ledger.append(event).leaf_hash

    ok(flow.genesis())
    for grant in flow.grants():
        ok(grant)
    ok(flow.policy(namespace=ns, plan=FAST_PLAN))
    for manifest in target_manifests("model-server", V1, 4):
        utils.create_from_dict(kube_api_client, manifest, namespace=ns)

    def phase(p: bytes) -> str:
        return inst.state().ledger.proposals[p].phase

    def steps(p: bytes) -> list[tuple[int, int, str]]:
        return [(s.step, s.weight, s.phase) for s in inst.state().ledger.proposals[p].steps]

    def approved(image: str) -> bytes:
        p = ok(flow.propose(image, namespace=ns, deployment="model-server"))
        evals = (ok(flow.eval(p, "safety", 0.99)), ok(flow.eval(p, "quality", 0.91)))
        for who in ("alice", "bob"):
            ok(flow.approve(p, evals, who))
        return p

    try:
        first = approved(V2)
        wait_for("the canary", lambda: read_deployment(apps, ns, "model-server-canary"), 90)
        scope = KillScope("TARGET", ns, "model-server")
        ok(flow.kill(scope))
        wait_for(
            "the canary removed",
            lambda: read_deployment(apps, ns, "model-server-canary") is None,
            30,
        )
        wait_for("ROLLED_BACK", lambda: phase(first) == "ROLLED_BACK", 30)
        ok(flow.release(scope))

        second = approved(V3)
        wait_for("step 1", lambda: (1, 50, "ADVANCED") in steps(second), 90)
        ok(flow.health(second, 1, True))
        wait_for("PROMOTED", lambda: phase(second) == "PROMOTED", 90)
        wait_for(
            "the stable Deployment on v3",
            lambda: (
                apps.read_namespaced_deployment("model-server", ns)
                .spec.template.spec.containers[0]
                .image
                == V3
            ),
            60,
        )
    except Exception:
        print(runner.logs(SYSTEM, "steward-"))
        raise

    # In-cluster config: the leader's Lease names one of the controller pods, by its own token.
    lease = client.CoordinationV1Api(kube_api_client).read_namespaced_lease(
        "steward-controller", SYSTEM
    )
    assert lease.spec.holder_identity in {
        p.name for p in runner.running(SYSTEM, "steward-controller-")
    }

    # Events with the shipped RBAC (create on events, nothing more): the promotion and the kill
    # switch are on the target Deployment, as the controller's own service account wrote them.
    def reasons() -> list[str]:
        events = client.CoreV1Api(kube_api_client).list_namespaced_event(
            ns, field_selector="reportingComponent=steward.dev/controller"
        )
        return [e.reason for e in events.items if e.involved_object.kind == "Deployment"]

    seen = wait_for(
        "the controller's Events",
        lambda: {"KillSwitchEngaged", "RolloutPromoted"} <= set(reasons()) and reasons(),
        60,
    )
    assert "RolledBack" in seen

    # The controller's metrics, on the port its scrape annotations name.
    controller_pod = runner.running(SYSTEM, "steward-controller-")[0]
    metrics = runner.forward_pod(controller_pod, 9090)
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"http://{metrics}/metrics", timeout=10
    ) as resp:
        assert b"steward_" in resp.read()

    # The ledger pod goes; the StatefulSet makes another on the same claim, with every event.
    size = ledger.head().size
    ledger.close()
    old = runner.running(SYSTEM, "steward-ledger-")[0].uid
    kubectl(inst.cluster, "-n", SYSTEM, "delete", "pod", "steward-ledger-0", "--wait=false")
    wait_for(
        "a new steward-ledger-0",
        lambda: any(p.uid != old for p in runner.running(SYSTEM, "steward-ledger-")),
        START,
    )
    again = ready_ledger(inst)
    assert again.head().size == size
    again.close()

    assert runner.crash_loops() == {}, runner.logs(SYSTEM, "steward-")


def test_an_argument_the_controller_rejects_crash_loops_its_pods(installs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = overlay(
        tmp_path,
        [
            (
                {"kind": "Deployment", "name": "steward-controller"},
                [
                    {
                        "op": "add",
                        "path": "/spec/template/spec/containers/0/args/-",
                        "value": "--no-such-flag",
                    }
                ],
            )
        ],
    )
    inst: Installed = installs(bad)
    wait_for(
        "the controller pods exiting with status 2",
        lambda: (
            sum(
                2 in codes
                for pod, codes in inst.runner.crash_loops().items()
                if "steward-controller-" in pod
            )
            == 2
        ),
        START,
    )
    assert "unrecognized arguments: --no-such-flag" in inst.runner.logs(
        SYSTEM, "steward-controller-"
    )


def test_without_patch_on_deployments_the_controller_cannot_start_a_canary(
    installs,
    tmp_path: Path,
    apps: client.AppsV1Api,
    kube_api_client: client.ApiClient,  # type: ignore[no-untyped-def]
) -> None:
    weaker = overlay(
        tmp_path,
        [
            (
                {"kind": "ClusterRole", "name": "steward-controller"},
                [
                    {
                        "op": "replace",
                        "path": "/rules/0/verbs",
                        "value": ["get", "list", "watch", "create", "delete"],
                    }
                ],
            )
        ],
    )
    inst: Installed = installs(weaker)
    ns = inst.namespace
    pods_running(inst)
    ledger = ready_ledger(inst)
    flow = Flow(
        inst.cast,
        ledger="prod",
        origin="example.org/steward/prod",
        state=followed_state(ledger.read),
    )
    for event in (flow.genesis(), *flow.grants(), flow.policy(namespace=ns, plan=FAST_PLAN)):
        ledger.append(event)
    for manifest in target_manifests("model-server", V1, 4):
        utils.create_from_dict(kube_api_client, manifest, namespace=ns)
    p = ledger.append(flow.propose(V2, namespace=ns, deployment="model-server")).leaf_hash
    evals = tuple(
        ledger.append(flow.eval(p, s, v)).leaf_hash
        for s, v in (("safety", 0.99), ("quality", 0.91))
    )
    for who in ("alice", "bob"):
        ledger.append(flow.approve(p, evals, who))
    wait_for(
        "the controller refused by the API server",
        lambda: "forbidden" in inst.runner.logs(SYSTEM, "steward-controller-").lower(),
        120,
    )
    time.sleep(5)
    assert read_deployment(apps, ns, "model-server-canary") is None
    ledger.close()
