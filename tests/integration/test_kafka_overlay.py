"""k8s/overlays/kafka renders, its ledger's args are ones `steward serve` accepts, and the API
server of the local control plane admits every object it makes (``kubectl apply
--dry-run=server``: schema, defaulting and admission, nothing stored).

Running the overlay's ledger pod against a broker would need the overlay's own secured Kafka
(SASL_SSL on kafka-bootstrap.kafka.svc); tests/integration/test_kafka_secured.py covers the
server on such a cluster, and tests/e2e/test_shipped_manifests.py runs the base as shipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.kube_cluster import LocalCluster
from ledger.cli.parser import build_parser
from tests.e2e.test_shipped_manifests import uninstall

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "steward-system"


@pytest.fixture
def rendered(kube_cluster: LocalCluster) -> str:
    return kube_cluster.kubectl("kustomize", str(REPO / "k8s" / "overlays" / "kafka")).stdout


@pytest.fixture
def system_namespace(kube_cluster: LocalCluster) -> Iterator[None]:
    """steward-system exists (a server-side dry run stores nothing, so namespaced objects need
    their namespace to be real); removed afterwards, so the next install starts empty."""
    uninstall(kube_cluster)
    kube_cluster.kubectl("create", "namespace", SYSTEM)
    try:
        yield
    finally:
        uninstall(kube_cluster)


def _ledger(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (ledger,) = [o for o in objects if o["kind"] == "StatefulSet"]
    return ledger


def test_the_kafka_overlay_moves_the_log_to_kafka_and_its_args_parse(rendered: str) -> None:
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    ledger = _ledger(objects)
    spec = ledger["spec"]
    assert "volumeClaimTemplates" not in spec  # nothing of the log on local disk
    (container,) = spec["template"]["spec"]["containers"]
    args = container["args"]
    assert not any(a.startswith("--db") for a in args)
    assert "--kafka-bootstrap=kafka-bootstrap.kafka.svc:9093" in args
    parsed = build_parser().parse_args([*container["command"][1:], *args])
    assert parsed.kafka_security_protocol == "SASL_SSL"
    # The SASL password comes from the environment, the brokers' CA from a mounted Secret.
    (password,) = container["env"]
    assert password["valueFrom"]["secretKeyRef"] == {
        "name": "steward-ledger-kafka",
        "key": "password",
    }
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["kafka"]["secret"]["secretName"] == "steward-ledger-kafka"
    assert "emptyDir" in volumes["data"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(mounts["kafka"]) / "ca.crt" == Path(
        next(a.split("=", 1)[1] for a in args if a.startswith("--kafka-ssl-cafile="))
    )
    # Everything else is the base's.
    kinds = sorted(o["kind"] for o in objects)
    assert kinds.count("Deployment") == 1 and "NetworkPolicy" in kinds


def test_the_api_server_admits_every_object_of_the_kafka_overlay(
    kube_cluster: LocalCluster, rendered: str, system_namespace: None
) -> None:
    out = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    for name in (
        "statefulset.apps/steward-ledger",
        "deployment.apps/steward-controller",
        "networkpolicy.networking.k8s.io/steward-ledger",
        "customresourcedefinition.apiextensions.k8s.io/modelrollouts.steward.dev",
    ):
        assert name in out.stdout, out.stdout
    assert "(server dry run)" in out.stdout
