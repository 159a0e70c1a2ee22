"""Pieces of the controller that need no cluster: observation parsing, views, logs, flags."""

from __future__ import annotations

import datetime as dt
import json
import logging

from kubernetes import client

from controller.executor import (
    EMERGENCY_STOP_ANNOTATION,
    ClusterCache,
    _emergency_stop,
    _observed_deployment,
    _observed_pod,
    annotation_setter,
)
from controller.main import JsonFormatter, build_parser
from controller.mirror import mirror_status
from controller.planner import MARKER_ANNOTATION, ObservedTarget, plan
from controller.state import ControllerState
from controller.view import rollout_views
from ledger.formats import KillScope, Target
from tests.unit.harness import Harness
from tests.unit.test_planner import V1, Sim, ready


def test_deployment_observation_reads_spec_status_and_markers() -> None:
    d = client.V1Deployment(
        metadata=client.V1ObjectMeta(
            name="m", namespace="ns", generation=3, annotations={MARKER_ANNOTATION: "abc/0/1"}
        ),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "m"}),
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(containers=[client.V1Container(name="s", image="img:2")])
            ),
        ),
        status=client.V1DeploymentStatus(
            ready_replicas=1, updated_replicas=2, observed_generation=3
        ),
    )
    o = _observed_deployment(d)
    assert (o.replicas, o.image("s"), o.ready_replicas, o.marker) == (2, "img:2", 1, "abc/0/1")
    assert o.containers == (("s", "img:2"),)
    assert not o.settled(2) and o.generation == 3


def test_pod_observation_sees_crashloop() -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="p", creation_timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        ),
        spec=client.V1PodSpec(containers=[client.V1Container(name="s", image="bad")]),
        status=client.V1PodStatus(
            phase="Running",
            conditions=[client.V1PodCondition(type="Ready", status="False")],
            container_statuses=[
                client.V1ContainerStatus(
                    name="s",
                    image="bad",
                    image_id="",
                    ready=False,
                    restart_count=3,
                    state=client.V1ContainerState(
                        waiting=client.V1ContainerStateWaiting(reason="CrashLoopBackOff")
                    ),
                )
            ],
        ),
    )
    o = _observed_pod(pod)
    assert (o.ready, o.waiting_reason, o.created_ms) == (
        False,
        "CrashLoopBackOff",
        1_767_225_600_000,
    )


def test_emergency_stop_names_the_manager_that_set_the_annotation() -> None:
    p = "ab" * 32
    obj = {
        "metadata": {
            "name": "model-server-abababab",
            "namespace": "models",
            "annotations": {EMERGENCY_STOP_ANNOTATION: "latency"},
            "managedFields": [
                {
                    "manager": "steward-controller",
                    "operation": "Apply",
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsV1": {"f:spec": {}},
                },
                {
                    "manager": "kubectl-annotate",
                    "operation": "Update",
                    "time": "2026-01-01T00:00:09Z",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {f"f:{EMERGENCY_STOP_ANNOTATION}": {}}}
                    },
                },
            ],
        },
        "spec": {"proposal": p, "target": "model-server"},
    }
    stop = _emergency_stop(obj, "model-server")
    assert stop is not None
    assert stop.proposal == bytes.fromhex(p) and stop.reason == "latency"
    assert (stop.source.field_manager, stop.source.time) == (
        "kubectl-annotate",
        "2026-01-01T00:00:09Z",
    )
    assert stop.source.object == "models/model-server-abababab"
    assert _emergency_stop(obj, "other") is None
    assert annotation_setter({"managedFields": []}, EMERGENCY_STOP_ANNOTATION) == ("unknown", "")


def test_cache_keeps_the_newest_resource_version() -> None:
    cache = ClusterCache(client.ApiClient(), ["ns"])

    def dep(rv: str) -> client.V1Deployment:
        return client.V1Deployment(
            metadata=client.V1ObjectMeta(name="d", namespace="ns", resource_version=rv),
            spec=client.V1DeploymentSpec(
                selector=client.V1LabelSelector(match_labels={"app": "d"}),
                template=client.V1PodTemplateSpec(spec=client.V1PodSpec(containers=[])),
            ),
        )

    new, old = dep("20"), dep("10")
    cache.put_deployment(new)
    cache.update(cache.deployments, "ns", old, deleted=False)
    assert cache.deployment("ns", "d") is new
    cache.update(cache.deployments, "ns", old, deleted=True)
    assert cache.deployment("ns", "d") is None


def test_views_follow_the_rollout_and_feed_the_mirror() -> None:
    h = Harness()
    sim = Sim(h)
    p, _ = h.approved()
    views = rollout_views(sim.fold(), sim.observed(), sim.plan())
    assert [(v.phase, v.display_phase) for v in views] == [("PENDING", "Pending")]
    sim.run()
    (v,) = rollout_views(sim.fold(), sim.observed(), sim.plan())
    assert (v.phase, v.step, v.weight, v.desired_canary_replicas, v.canary_replicas) == (
        "ADVANCED",
        1,
        50,
        2,
        2,
    )
    assert v.approvals == ("human:alice@example.org", "human:bob@example.org")
    assert "healthy report" in v.message and v.object_name == f"model-server-{p.hex()[:10]}"
    assert v.last_seq == sim.cs.last_seq[p]
    h.ok(h.flow.kill(KillScope("GLOBAL")))
    sim.run()
    (v,) = rollout_views(sim.fold(), sim.observed(), sim.plan())
    assert (v.phase, v.display_phase, v.weight) == ("ROLLED_BACK", "Killed", 0)
    status = mirror_status(v)
    assert status["phase"] == "Killed" and status["message"].startswith("kill switch GLOBAL")


def test_views_without_observation() -> None:
    h = Harness()
    h.approved()
    cs = ControllerState()
    for e in h.core.entries or []:
        cs.fold(e)
    (v,) = rollout_views(cs, {})
    assert v.stable_replicas == 0 and v.phase == "PENDING"
    obs = {Target("models", "model-server"): ObservedTarget(ready(4, V1))}
    assert plan(cs, obs, h.now)  # sanity: the same state plans a start


def test_json_logs_carry_key_value_fields() -> None:
    record = logging.LogRecord(
        "steward.controller",
        logging.INFO,
        __file__,
        1,
        "action=%s ok=%s ms=%.1f",
        ("StopCanary", True, 3.25),
        None,
    )
    out = json.loads(JsonFormatter().format(record))
    assert out["action"] == "StopCanary" and out["ok"] == "True" and out["ms"] == "3.2"
    assert out["level"] == "info" and out["msg"].startswith("action=")


def test_flags_accept_the_manifest_spelling() -> None:
    args = build_parser().parse_args(
        [
            "--ledger",
            "ledger:7443",
            "--key-file",
            "k.pem",
            "--namespace",
            "a,b",
            "--namespace",
            "c",
            "--lease-namespace",
            "steward-system",
            "--listen",
            "0.0.0.0:7444",
        ]
    )
    assert args.key == "k.pem" and args.namespaces == ["a,b", "c"] and args.listen == "0.0.0.0:7444"
