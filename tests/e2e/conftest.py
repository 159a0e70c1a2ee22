"""End-to-end fixtures: a real ledger server on SQLite, the local control plane, controllers.

Everything is a real process: ``python -m ledger.server`` with the cast's checkpoint key,
``steward-controller`` (as ``python -m controller.main``) with the controller key, reading the
ledger's SQLite file itself and appending through gRPC. Policies use hold times of 0-1 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client

from controller.state import ControllerState
from infra.kube_cluster import LocalCluster
from infra.kube_workload import target_manifests
from infra.processes import Child, start_python, wait_for, wait_for_port_file
from ledger.client import LedgerClient
from ledger.formats import PlanStep, SignedEvent, decode_log_entry
from ledger.scenario import Cast, Flow, followed_state
from ledger.store.sqlite import SQLiteLogStore
from tests.helpers.keys import write_checkpoint_key, write_principal_key

REPO = Path(__file__).resolve().parents[2]
V1 = "registry.example/model-server:v1"
V2 = "registry.example/model-server:v2"
FAST_PLAN = (PlanStep(10, 0, False), PlanStep(50, 1, True), PlanStep(100, 0, False))


@dataclass
class Ledger:
    """A ledger server subprocess and a client; `flow` signs the governance story."""

    db: Path
    address: str
    server: Child
    client: LedgerClient
    flow: Flow
    cast: Cast

    def ok(self, event: SignedEvent) -> bytes:
        return self.client.append(event).leaf_hash

    def state(self) -> ControllerState:
        store = SQLiteLogStore(self.db)
        try:
            cs = ControllerState()
            for record in store.read():
                cs.fold(decode_log_entry(record.value))
            return cs
        finally:
            store.close()

    def steps(self, proposal: bytes) -> list[tuple[int, int, str]]:
        p = self.state().ledger.proposals[proposal]
        return [(s.step, s.weight, s.phase) for s in p.steps]

    def phase(self, proposal: bytes) -> str:
        return self.state().ledger.proposals[proposal].phase

    # -- the story ------------------------------------------------------------------------

    def propose(self, namespace: str, image: str = V2, deployment: str = "model-server") -> bytes:
        return self.ok(self.flow.propose(image, namespace=namespace, deployment=deployment))

    def evaluate(self, p: bytes) -> tuple[bytes, bytes]:
        return (
            self.ok(self.flow.eval(p, "safety", 0.99)),
            self.ok(self.flow.eval(p, "quality", 0.91)),
        )

    def approve(self, p: bytes, evals: tuple[bytes, ...], *who: str) -> None:
        for w in who or ("alice", "bob"):
            self.ok(self.flow.approve(p, evals, w))

    def approved(self, namespace: str, image: str = V2) -> tuple[bytes, tuple[bytes, bytes]]:
        """A proposal of ``image`` with both evals and alice's and bob's approvals: (hash, evals)."""
        p = self.propose(namespace, image)
        evals = self.evaluate(p)
        self.approve(p, evals)
        return p, evals


@pytest.fixture
def ledger(tmp_path: Path, kube_namespace: str) -> Iterator[Ledger]:
    """A fresh ledger whose policy selects the test's namespace, with a fast plan."""
    cast = Cast.create()
    key_file = write_checkpoint_key(cast, tmp_path)
    db, port_file = tmp_path / "ledger.db", tmp_path / "ledger.port"
    server = start_python(
        [
            "-m",
            "ledger.server",
            "--db",
            str(db),
            "--checkpoint-key",
            str(key_file),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ],
        tmp_path / "ledger.log",
        cwd=REPO,
    )
    address = f"127.0.0.1:{wait_for_port_file(port_file, 30, child=server)}"
    ledger_client = LedgerClient(address)
    flow = Flow(
        cast,
        ledger="e2e",
        origin="steward.dev/ledger/e2e",
        state=followed_state(ledger_client.read),
    )
    led = Ledger(db, address, server, ledger_client, flow, cast)
    led.ok(flow.genesis())
    for grant in flow.grants():
        led.ok(grant)
    led.ok(flow.policy(namespace=kube_namespace, plan=FAST_PLAN))
    try:
        yield led
    finally:
        led.client.close()
        server.stop(grace=10)


@pytest.fixture(scope="session")
def crd_installed(kube_cluster: LocalCluster) -> None:
    kube_cluster.kubectl("apply", "-f", str(REPO / "k8s" / "base" / "crd-modelrollouts.yaml"))
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/modelrollouts.steward.dev"
    )


@pytest.fixture
def target(kube_namespace: str, kube_api_client: client.ApiClient, crd_installed: None) -> str:
    """The user's Deployment `model-server` (4 replicas of v1) and its Service."""
    from kubernetes import utils

    for manifest in target_manifests("model-server", V1, 4):
        utils.create_from_dict(kube_api_client, manifest, namespace=kube_namespace)
    apps = client.AppsV1Api(kube_api_client)
    wait_for(
        "4 ready stable pods",
        lambda: (
            (
                apps.read_namespaced_deployment(
                    "model-server", kube_namespace
                ).status.ready_replicas
                or 0
            )
            >= 4
        ),
    )
    return "model-server"


@dataclass
class ControllerProc:
    identity: str
    child: Child

    def log(self) -> str:
        return self.child.log()

    def actions(self) -> list[str]:
        return [
            line
            for line in self.log().splitlines()
            if '"action"' in line and '"ok": "True"' in line
        ]

    def kill(self) -> None:
        self.child.kill(timeout=10)

    def stop(self) -> int:
        return self.child.stop(grace=15)


@dataclass
class Controllers:
    tmp: Path
    ledger: Ledger
    cluster: LocalCluster
    namespace: str
    key_file: Path
    started: list[ControllerProc] = field(default_factory=list)

    def start(self, identity: str = "ctl-a", *extra: str) -> ControllerProc:
        child = start_python(
            [
                "-m",
                "controller.main",
                "--ledger",
                self.ledger.address,
                "--store",
                f"sqlite:{self.ledger.db}",
                "--kubeconfig",
                str(self.cluster.kubeconfig),
                "--key",
                str(self.key_file),
                "--namespace",
                self.namespace,
                "--snapshot-db",
                str(self.tmp / f"snap-{identity}.db"),
                "--lease-namespace",
                self.namespace,
                "--identity",
                identity,
                "--tick-seconds",
                "0.2",
                "--not-ready-grace-seconds",
                "20",
                *extra,
            ],
            self.tmp / f"controller-{identity}-{len(self.started)}.log",
            name=identity,
            cwd=REPO,
        )
        cp = ControllerProc(identity, child)
        self.started.append(cp)
        return cp


@pytest.fixture
def controllers(
    tmp_path: Path, ledger: Ledger, kube_cluster: LocalCluster, kube_namespace: str, target: str
) -> Iterator[Controllers]:
    key_file = write_principal_key(ledger.cast, "controller", tmp_path)
    c = Controllers(tmp_path, ledger, kube_cluster, kube_namespace, key_file)
    try:
        yield c
    finally:
        for cp in c.started:
            cp.stop()
