"""Kill-switch reaction time, measured (not asserted): ledger ack → canary at 0 seen by a watch.

Run with ``pytest -m slow tests/e2e/test_kill_latency.py -s``; prints one line per trial and a
summary. Each trial rolls out a fresh proposal to step 0 and stops it with a PROPOSAL-scope kill
switch, so trials need no release in between.
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from kubernetes import client, watch

from infra.processes import wait_for
from ledger.formats import KillScope
from tests.e2e.conftest import V2, Controllers, Ledger

pytestmark = [pytest.mark.kube, pytest.mark.slow]

TRIALS = 5


def _watch_canary_zero(
    apps: client.AppsV1Api, ns: str, ready: threading.Event, seen: list[float]
) -> None:
    current = apps.list_namespaced_deployment(
        ns, field_selector="metadata.name=model-server-canary"
    )
    w = watch.Watch()
    ready.set()
    for event in w.stream(
        apps.list_namespaced_deployment,
        ns,
        field_selector="metadata.name=model-server-canary",
        resource_version=current.metadata.resource_version,
        timeout_seconds=30,
    ):
        obj = event["object"]
        if event["type"] == "DELETED" or obj.spec.replicas == 0:
            seen.append(time.monotonic())
            w.stop()
            return


def test_kill_switch_reaction_time(
    ledger: Ledger, controllers: Controllers, kube_namespace: str, kube_api_client: client.ApiClient
) -> None:
    ns = kube_namespace
    apps = client.AppsV1Api(kube_api_client)
    controllers.start()
    results = []
    for i in range(TRIALS):
        p, _ = ledger.approved(ns, image=f"{V2}-{i}")

        def canary_up() -> bool:
            try:
                c = apps.read_namespaced_deployment("model-server-canary", ns)
            except client.ApiException:
                return False
            return bool(c.spec.replicas and (c.status.ready_replicas or 0) >= c.spec.replicas)

        wait_for(f"trial {i}: canary ready", canary_up)
        ready, seen = threading.Event(), []
        t = threading.Thread(target=_watch_canary_zero, args=(apps, ns, ready, seen), daemon=True)
        t.start()
        ready.wait(10)
        before = time.monotonic()
        ledger.ok(ledger.flow.kill(KillScope("PROPOSAL", proposal=p)))
        acked = time.monotonic()
        t.join(15)
        assert seen, f"trial {i}: the canary never reached 0"
        results.append(((seen[0] - acked) * 1000, (acked - before) * 1000))
        print(
            f"trial {i}: ack→canary 0 {results[-1][0]:.0f} ms (append itself {results[-1][1]:.0f} ms)"
        )
        wait_for(f"trial {i}: rolled back", lambda p=p: ledger.phase(p) == "ROLLED_BACK")
        wait_for(f"trial {i}: canary gone", lambda: not canary_up())
        time.sleep(0.5)
    reaction = [r[0] for r in results]
    print(
        f"kill switch reaction over {TRIALS} trials: median {statistics.median(reaction):.0f} ms, "
        f"min {min(reaction):.0f} ms, max {max(reaction):.0f} ms"
    )
