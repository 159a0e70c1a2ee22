"""The controller on a Kafka-backed ledger: events forged straight into the topic change nothing.

A real broker, a real `python -m ledger.server --kafka-bootstrap ...`, a real
`steward-controller --store kafka:BOOTSTRAP/TOPIC` replaying the topic itself, and the local
control plane. Someone with write access to the topic (but no keys) produces, around the
ledger server: garbage, approvals signed by a stranger's keys and a RolloutStep signed by a
stranger posing as the controller, each as a well-formed entry with the right seq and prev.
The controller must not give the canary a single replica, must count the records as invalid,
and must go on to roll out once real approvals arrive. The auditor flags every forged record.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kubernetes import client

from infra.kafka_cluster import KafkaCluster
from infra.kube_cluster import LocalCluster
from infra.kube_workload import target_manifests
from infra.processes import Child, start_python, wait_for, wait_for_log, wait_for_port_file
from ledger.client import LedgerClient
from ledger.events import new_body, sign
from ledger.export import write_trust_root
from ledger.formats import ApprovalRecorded, ObservedState, RolloutStep, make_entry
from ledger.keys import PrivateKey
from ledger.scenario import Cast, Flow
from tests.e2e.conftest import FAST_PLAN
from tests.helpers.keys import write_checkpoint_key, write_principal_key

pytestmark = [pytest.mark.kafka, pytest.mark.kube]
REPO = Path(__file__).resolve().parents[2]
V1, V2 = "registry.example/model-server:v1", "registry.example/model-server:v2"


@pytest.fixture
def world(
    tmp_path: Path,
    kafka_cluster: KafkaCluster,
    kafka_topic_name: str,
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kube_api_client: client.ApiClient,
    crd_installed: None,
) -> Iterator[dict[str, object]]:
    from kubernetes import utils

    for manifest in target_manifests("model-server", V1, 4):
        utils.create_from_dict(kube_api_client, manifest, namespace=kube_namespace)
    cast = Cast.create()
    checkpoint_key = write_checkpoint_key(cast, tmp_path)
    controller_key = write_principal_key(cast, "controller", tmp_path)
    bootstrap = kafka_cluster.bootstrap_servers
    port_file = tmp_path / "ledger.port"
    server = start_python(
        [
            "-m",
            "ledger.server",
            "--kafka-bootstrap",
            bootstrap,
            "--topic",
            kafka_topic_name,
            "--checkpoint-key",
            str(checkpoint_key),
            "--port-file",
            str(port_file),
        ],
        tmp_path / "ledger.log",
        cwd=REPO,
    )
    children = [server]
    try:
        address = f"127.0.0.1:{wait_for_port_file(port_file, 180, child=server)}"
        flow = Flow(cast, ledger="kafka-e2e", origin="steward.dev/ledger/kafka-e2e")
        ledger = LedgerClient(address, timeout=30)
        ledger.append(flow.genesis())
        for grant in flow.grants():
            ledger.append(grant)
        ledger.append(flow.policy(namespace=kube_namespace, plan=FAST_PLAN))
        controller = start_python(
            [
                "-m",
                "controller.main",
                "--ledger",
                address,
                "--store",
                f"kafka:{bootstrap}/{kafka_topic_name}",
                "--kubeconfig",
                str(kube_cluster.kubeconfig),
                "--key",
                str(controller_key),
                "--namespace",
                kube_namespace,
                "--lease-namespace",
                kube_namespace,
                "--identity",
                "kafka-ctl",
                "--tick-seconds",
                "0.2",
                "--log-format",
                "text",
            ],
            tmp_path / "controller.log",
            cwd=REPO,
        )
        children.append(controller)
        yield {
            "flow": flow,
            "ledger": ledger,
            "bootstrap": bootstrap,
            "topic": kafka_topic_name,
            "ns": kube_namespace,
            "cast": cast,
            "controller": controller,
            "tmp": tmp_path,
            "apps": client.AppsV1Api(kube_api_client),
        }
    finally:
        for child in reversed(children):
            child.stop(grace=20)


def _canary_replicas(apps: client.AppsV1Api, ns: str) -> int:
    items = apps.list_namespaced_deployment(ns).items
    return sum(d.spec.replicas or 0 for d in items if d.metadata.name == "model-server-canary")


def test_forged_records_in_the_topic_change_nothing(world: dict[str, object]) -> None:
    flow: Flow = world["flow"]  # type: ignore[assignment]
    ledger: LedgerClient = world["ledger"]  # type: ignore[assignment]
    apps: client.AppsV1Api = world["apps"]  # type: ignore[assignment]
    ns = str(world["ns"])

    proposal = ledger.append(flow.propose(V2, namespace=ns, deployment="model-server")).leaf_hash
    evals = (
        ledger.append(flow.eval(proposal, "safety", 0.99)).leaf_hash,
        ledger.append(flow.eval(proposal, "quality", 0.9)).leaf_hash,
    )

    # Someone with topic access but no keys writes around the server. Each forged record is a
    # well-formed entry at the right position, so only signature checks can refuse it.
    stranger_alice, stranger_bob, fake_controller = (PrivateKey.generate() for _ in range(3))
    head = ledger.head()
    seq, prev = head.size, head.last_leaf_hash
    forged = []
    for key in (stranger_alice, stranger_bob):
        event = sign(
            new_body(flow.ledger, ApprovalRecorded(proposal, "APPROVE", evals, "forged")), key
        )
        forged.append(make_entry(seq, prev, event, int(time.time() * 1000)))
    step = RolloutStep(
        proposal, 0, FAST_PLAN[0].weight, "STARTED", "forged", ObservedState(4, 0, 0, V1, "")
    )
    forged.append(
        make_entry(
            seq, prev, sign(new_body(flow.ledger, step), fake_controller), int(time.time() * 1000)
        )
    )
    producer = KafkaProducer(bootstrap_servers=str(world["bootstrap"]).split(","), acks="all")
    producer.send(str(world["topic"]), key=b"garbage", value=b"\xc3\x01not an entry at all")
    for e in forged:
        producer.send(str(world["topic"]), key=e.body.event_id, value=e.entry_bytes)
    producer.flush()
    producer.close()

    # The controller reads them, refuses them, and gives the canary nothing.
    controller: Child = world["controller"]  # type: ignore[assignment]
    wait_for_log(controller, r"invalid record skipped", 60, count=4)
    time.sleep(2)
    assert _canary_replicas(apps, ns) == 0
    assert all(e.body.type != "RolloutStep" for e in ledger.read(0))

    # Real approvals through the server: the controller rolls out, the chain stays whole.
    ledger.append(flow.approve(proposal, evals, "alice"))
    ledger.append(flow.approve(proposal, evals, "bob"))
    wait_for("the canary to get a replica", lambda: _canary_replicas(apps, ns) >= 1, timeout=90)

    # The auditor, reading the topic itself, flags every forged record.
    trust = Path(str(world["tmp"])) / "trust-root.json"
    write_trust_root(ledger, trust)
    audit = subprocess.run(
        [
            str(Path(sys.executable).parent / "steward-audit"),
            "verify",
            "--kafka",
            str(world["bootstrap"]),
            "--topic",
            str(world["topic"]),
            "--trust-root",
            str(trust),
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert audit.returncode == 1, audit.stdout[-3000:] + audit.stderr[-3000:]
    findings = json.loads(audit.stdout)["findings"]
    at_seq = [f["code"] for f in findings if f["seq"] == seq]
    # The garbage cannot even be decoded; each forged entry is a second record claiming seq.
    assert "UNKNOWN_FINGERPRINT" in at_seq
    assert at_seq.count("ENTRY_INSERTED") >= len(forged)
