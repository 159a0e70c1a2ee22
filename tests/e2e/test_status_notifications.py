"""Kubernetes-native status and notifications, end to end: real ledger server, real control
plane, the controller as a process, webhook sinks as real HTTP servers on loopback.

- a promoted rollout: the ModelRollout's conditions read back through the API, its Events and
  the Deployment's (one per ledger step, none doubled by a controller killed mid-rollout),
  ``kubectl describe`` telling the story, and the sink receiving exactly one CloudEvent per
  ledger step, in order, none lost across the SIGKILL and restart;
- a killed rollout: Aborted/KillSwitch conditions, Warning Events; a sink that answers 500 gets
  every attempt and then a dead-letter line per event; a slow sink holding a request while the
  kill switch is engaged does not delay the canary's stop.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from infra.kube_cluster import LocalCluster
from infra.processes import wait_for
from ledger.formats import KillScope, RolloutStep
from tests.e2e.conftest import FAST_PLAN, Controllers, Ledger
from tests.e2e.test_controller_e2e import canary_ready, mirror
from tests.e2e.test_kill_latency import _watch_canary_zero
from tests.helpers.http_sink import HttpSink

pytestmark = pytest.mark.kube

NAME = "model-server"


def conditions(custom: client.CustomObjectsApi, ns: str, p: bytes) -> dict[str, dict[str, Any]]:
    status = mirror(custom, ns, p).get("status") or {}
    return {c["type"]: c for c in status.get("conditions") or []}


def step_entries(ledger: Ledger, p: bytes) -> list[tuple[str, int, str]]:
    """(entry hash hex, seq, phase) of the proposal's RolloutStep entries, in log order."""
    from ledger.formats import decode_log_entry
    from ledger.store.sqlite import SQLiteLogStore

    store = SQLiteLogStore(ledger.db)
    try:
        out = []
        for record in store.read():
            e = decode_log_entry(record.value)
            payload = e.body.payload
            if isinstance(payload, RolloutStep) and payload.proposal == p:
                out.append((e.leaf_hash.hex(), e.seq, payload.phase))
        return out
    finally:
        store.close()


def our_events(core: client.CoreV1Api, ns: str, kind: str, name: str) -> list[Any]:
    items = core.list_namespaced_event(
        ns, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}"
    ).items
    ours = [e for e in items if e.reporting_component == "steward.dev/controller"]
    return sorted(ours, key=lambda e: int(e.metadata.labels["steward.dev/seq"]))


def test_a_promoted_rollout_tells_its_story_and_the_sink_gets_each_step_once(
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
    # A sink slow enough that a step's CloudEvent is still queued when the controller dies.
    with HttpSink(delay=2.5) as sink, HttpSink(path="/team-hook") as team:
        # The policy names its own sink (PolicySet.notify): it gets the same events.
        ledger.ok(ledger.flow.policy(namespace=ns, plan=FAST_PLAN, notify=(team.url,)))
        flags = (
            *("--notify-url", sink.url, "--notify-state", str(tmp_path / "notify.json")),
            *("--notify-attempts", "50", "--notify-backoff-seconds", "0.2"),
        )
        first = controllers.start("ctl-a", *flags)
        p, _ = ledger.approved(ns)
        wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p), 40)
        first.kill()  # SIGKILL mid-rollout: no goodbye, no final snapshot or position write
        delivered_before = len(sink.events())
        # STARTED's POST takes 2.5 s and ADVANCED's waits behind it: at least one step's
        # CloudEvent was not delivered when the controller died.
        assert delivered_before <= 1
        second = controllers.start("ctl-a", *flags)
        first_two = {h for h, _, _ in step_entries(ledger, p)}
        wait_for(
            "the restart delivered the first two steps",
            lambda: {e["id"] for e in sink.events()} >= first_two,
            30,
        )
        # Now the sink fails (503, retried) while the rollout finishes, and the controller is
        # stopped cleanly: its last snapshot holds every step, the sink has not had the last
        # two. Only re-reading the log from the sink's position can deliver them.
        sink.status, sink.delay = 503, 0.0
        wait_for("canary at step 1", lambda: canary_ready(apps, ns, 2), 40)
        ledger.ok(ledger.flow.health(p, 1, True))
        wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 40)
        steps = step_entries(ledger, p)
        assert [phase for _, _, phase in steps] == ["STARTED", "ADVANCED", "ADVANCED", "PROMOTED"]
        wait_for(
            "a refused POST of a later step", lambda: any(r.status == 503 for r in sink.all()), 20
        )
        assert second.stop() == 0
        assert "snapshot" in second.log()
        sink.status = 200
        third = controllers.start("ctl-a", *flags)
        wait_for(
            "one CloudEvent per step",
            lambda: {e["id"] for e in sink.events()} >= {h for h, _, _ in steps},
            30,
        )
        assert "notifications re-offered" in third.log()
        time.sleep(1.5)  # a duplicate, if any were coming, would have arrived by now
        events = sink.events()
        # At-least-once with the entry hash as id: at most the one event in flight at the
        # SIGKILL may come twice; deduplicated by id they are the steps, in ledger order.
        # (Refused POSTs are not in events(): only those the sink accepted.)
        ids = [e["id"] for e in events]
        unique = list(dict.fromkeys(ids))
        assert unique == [h for h, _, _ in steps], (delivered_before, ids)
        assert len(ids) <= len(unique) + 1
        assert [e["data"]["seq"] for e in events] == sorted(e["data"]["seq"] for e in events)
        ev = events[-1]
        assert ev["specversion"] == "1.0" and ev["type"] == "dev.steward.rollout.step"
        assert ev["subject"] == f"{ns}/{NAME}-{p.hex()[:10]}"
        assert (ev["data"]["phase"], ev["data"]["weight"]) == ("PROMOTED", 100)
        assert ev["data"]["proposal"] == p.hex()
        assert sink.all()[0].headers["Content-Type"].startswith("application/cloudevents+json")
        wait_for(
            "the policy's sink",
            lambda: {e["id"] for e in team.events()} >= {h for h, _, _ in steps},
            30,
        )
        team_ids = [e["id"] for e in team.events()]
        assert list(dict.fromkeys(team_ids)) == [h for h, _, _ in steps]
        assert len(team_ids) <= len(steps) + 1

    # Conditions, read back through the API.
    obj_name = f"{NAME}-{p.hex()[:10]}"
    conds = wait_for(
        "Completed condition",
        lambda: (c := conditions(custom, ns, p)).get("Completed", {}).get("status") == "True" and c,
        20,
    )
    assert {t: c["status"] for t, c in conds.items()} == {
        "Progressing": "False",
        "Paused": "False",
        "Healthy": "True",
        "Completed": "True",
        "Aborted": "False",
    }
    assert conds["Completed"]["reason"] == "Promoted"
    assert conds["Progressing"]["reason"] == "RolloutCompleted"
    live = mirror(custom, ns, p)
    assert live["status"]["observedGeneration"] == live["metadata"]["generation"]
    assert all(c["observedGeneration"] == live["metadata"]["generation"] for c in conds.values())

    # Events on the ModelRollout and on the Deployment: one per ledger step, the restart
    # doubled none of them.
    want = ["RolloutStarted", "StepAdvanced", "StepAdvanced", "RolloutPromoted"]
    for kind, name in (("ModelRollout", obj_name), ("Deployment", NAME)):
        got = wait_for(
            f"{kind} events",
            lambda kind=kind, name=name: (
                len(our_events(core, ns, kind, name)) >= 4 and our_events(core, ns, kind, name)
            ),
            20,
        )
        assert [e.reason for e in got] == want, [e.message for e in got]
        assert all(e.type == "Normal" for e in got)
        assert [int(e.metadata.labels["steward.dev/seq"]) for e in got] == [s for _, s, _ in steps]
    # The commands docs/KUBECTL.md shows.
    kube_cluster.kubectl(
        "wait", "--for=condition=Completed", f"modelrollout/{obj_name}", "-n", ns, "--timeout=30s"
    )
    wide = kube_cluster.kubectl("get", "modelrollouts", "-n", ns, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    columns = dict(zip(header.split(), row.split(), strict=True))
    assert (columns["PHASE"], columns["HEALTHY"], columns["ABORTED"]) == (
        "Promoted",
        "True",
        "False",
    )
    ours = kube_cluster.kubectl(
        *("get", "events", "-n", ns, "--field-selector"),
        *("reportingComponent=steward.dev/controller", "--sort-by=.eventTime"),
    ).stdout
    assert ours.count("RolloutPromoted") == 2  # the ModelRollout's and the Deployment's
    assert "ScalingReplicaSet" not in ours  # the field selector keeps only ours
    described = kube_cluster.kubectl("describe", "modelrollout", obj_name, "-n", ns).stdout
    story = described[described.index("Events:") :]
    assert sorted(line.split()[1] for line in story.splitlines()[3:7]) == sorted(want)
    assert "Conditions:" in described
    assert "Completed" in described and "Promoted" in described  # the conditions
    listed = kube_cluster.kubectl("get", "events", "-n", ns, "--sort-by=.eventTime").stdout
    ours_in_order = [
        line.split()[2] for line in listed.splitlines() if f"modelrollout/{obj_name}" in line
    ]
    assert ours_in_order == want
    # A hand-scaled stable after promotion is drift: corrected, recorded, and an Event says so.
    kube_cluster.kubectl("scale", "deployment", NAME, "-n", ns, "--replicas=2")
    drift = wait_for(
        "DriftCorrected Event",
        lambda: [
            e for e in our_events(core, ns, "Deployment", NAME) if e.reason == "DriftCorrected"
        ],
        30,
    )
    assert drift[0].type == "Warning" and "DRIFT_CORRECTED" in drift[0].message
    assert any(e.reason == "DriftCorrected" for e in our_events(core, ns, "ModelRollout", obj_name))
    third.stop()
    assert "notification delivered" in third.log()


def test_a_killed_rollout_aborts_a_failing_sink_dead_letters_a_slow_one_never_delays_it(
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
    dead = tmp_path / "dead.jsonl"
    with HttpSink(delay=4.0) as slow, HttpSink(status=500, path="/hook?token=s3cr3t") as failing:
        controllers.start(
            "ctl-a",
            *("--notify-url", slow.url, "--notify-url", failing.url),
            *("--notify-timeout-seconds", "10", "--notify-dead-letter", str(dead)),
            *("--notify-attempts", "3", "--notify-backoff-seconds", "0.2"),
        )
        p, _ = ledger.approved(ns)
        wait_for("step 1 canary ready", lambda: canary_ready(apps, ns, 2), 40)
        # The slow sink is holding a request (4 s each): engage the kill switch now.
        wait_for("a POST held by the slow sink", lambda: slow.in_flight == 1, 20)
        ready, seen = threading.Event(), []  # type: ignore[var-annotated]
        watcher = threading.Thread(target=_watch_canary_zero, args=(apps, ns, ready, seen))
        watcher.start()
        ready.wait(10)
        ledger.ok(ledger.flow.kill(KillScope("TARGET", ns, NAME), reason="pager: p99 latency"))
        acked = time.monotonic()
        watcher.join(30)
        assert seen, "the canary never reached 0 replicas"
        reaction = seen[0] - acked
        print(f"kill switch ack -> canary 0 with a sink holding a POST: {reaction * 1000:.0f} ms")
        # A POST that arrived before the kill and was answered only after the stop.
        assert any(a < acked and a + slow.delay > seen[0] for a in slow.arrivals)
        # Far below one slow POST (4 s): the stop did not wait for the sink.
        assert reaction < 2.0, f"kill switch ack -> canary 0 took {reaction:.2f}s"
        wait_for("ROLLED_BACK", lambda: ledger.phase(p) == "ROLLED_BACK", 30)
        steps = step_entries(ledger, p)
        kill_entries = 1
        total = len(steps) + kill_entries  # STARTED, ADVANCED, kill, ROLLED_BACK
        # The failing sink: every attempt, then one dead-letter line per event.
        wait_for(
            "dead letters",
            lambda: dead.exists() and len(dead.read_text().splitlines()) >= total,
            60,
        )
        lines = [json.loads(line) for line in dead.read_text().splitlines()]
        assert len(lines) == total
        assert all(line["attempts"] == 3 and line["error"] == "HTTP 500" for line in lines)
        assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
        assert len(failing.all()) == 3 * total
        assert "s3cr3t" not in dead.read_text()
        assert {line["event"]["type"] for line in lines} == {
            "dev.steward.rollout.step",
            "dev.steward.killswitch.engaged",
        }
        # The slow sink gets them all, in order, retried nothing (each answered in 4 s < 10 s).
        wait_for("slow sink caught up", lambda: len(slow.events()) >= total, 60)
        got = slow.events()
        assert [e["type"] for e in got].count("dev.steward.killswitch.engaged") == 1
        kill = next(e for e in got if e["type"] == "dev.steward.killswitch.engaged")
        assert kill["data"]["rollouts"][0]["proposal"] == p.hex()
        assert kill["data"]["reason"] == "pager: p99 latency"
        assert [e["data"]["seq"] for e in got] == sorted(e["data"]["seq"] for e in got)
        assert got[-1]["data"]["phase"] == "ROLLED_BACK"

    conds = wait_for(
        "Aborted condition",
        lambda: (c := conditions(custom, ns, p)).get("Aborted", {}).get("status") == "True" and c,
        20,
    )
    assert conds["Aborted"]["reason"] == "KillSwitch"
    assert "kill switch" in conds["Aborted"]["message"]
    assert conds["Healthy"]["status"] == "Unknown"
    assert conds["Completed"]["status"] == "False"
    assert conds["Progressing"]["status"] == "False"
    obj_name = f"{NAME}-{p.hex()[:10]}"
    for kind, name in (("ModelRollout", obj_name), ("Deployment", NAME)):
        got = wait_for(
            f"{kind} events",
            lambda kind=kind, name=name: (
                len(our_events(core, ns, kind, name)) >= 4 and our_events(core, ns, kind, name)
            ),
            20,
        )
        assert [e.reason for e in got] == [
            "RolloutStarted",
            "StepAdvanced",
            "KillSwitchEngaged",
            "RolledBack",
        ]
        assert [e.type for e in got] == ["Normal", "Normal", "Warning", "Warning"]
        assert "pager: p99 latency" in got[2].message
    described = kube_cluster.kubectl("describe", "deployment", NAME, "-n", ns).stdout
    assert "KillSwitchEngaged" in described and "RolledBack" in described


def test_only_the_leader_notifies_and_a_takeover_loses_nothing(
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    kube_namespace: str,
    kube_api_client: client.ApiClient,
) -> None:
    ns = kube_namespace
    coord = client.CoordinationV1Api(kube_api_client)
    with HttpSink() as sink:
        a = controllers.start("ctl-a", "--notify-url", sink.url)
        wait_for("ctl-a leads", lambda: _holder(coord, ns) == "ctl-a")
        b = controllers.start("ctl-b", "--notify-url", sink.url)
        p, _ = ledger.approved(ns)
        wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p), 40)
        first_two = [h for h, _, _ in step_entries(ledger, p)]
        wait_for("the leader's two", lambda: len(sink.events()) >= 2, 20)
        time.sleep(1.0)  # a standby delivering too would show as a second copy by now
        assert [e["id"] for e in sink.events()] == first_two, "the standby notified"
        assert "notification delivered" not in b.log()
        a.kill()
        ledger.ok(ledger.flow.health(p, 1, True))
        wait_for("ctl-b takes the lease", lambda: _holder(coord, ns) == "ctl-b", 20)
        wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 30)
        steps = [h for h, _, _ in step_entries(ledger, p)]
        wait_for("every step", lambda: {e["id"] for e in sink.events()} >= set(steps), 30)
        ids = [e["id"] for e in sink.events()]
        # The new leader's queue held everything since it started: the two steps the old
        # leader had delivered come again, same ids; deduplicated, the steps in order.
        assert list(dict.fromkeys(ids)) == steps
        assert len(ids) <= len(steps) + 2
        assert "notification delivered" in b.log()


def _holder(coord: client.CoordinationV1Api, ns: str) -> str:
    try:
        return coord.read_namespaced_lease("steward-controller", ns).spec.holder_identity or ""
    except client.ApiException:
        return ""
