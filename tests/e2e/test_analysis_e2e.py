"""Automated analysis end to end: the real control plane with KWOK, the ledger server, the
controller, steward-monitor and a real Prometheus scraping a metrics endpoint the test
controls (docs/ANALYSIS.md). Heavy: run this module on its own."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from infra.kube_workload import read_deployment
from infra.processes import Child, start_python, wait_for, wait_for_port_file
from infra.prometheus import MetricsSource, PrometheusServer
from ledger.analysis import render_query
from ledger.client import LedgerRpcError
from ledger.formats import (
    CheckEvidence,
    HealthCheck,
    HealthReported,
    NoDataRule,
    Sample,
    Target,
)
from tests.e2e.conftest import FAST_PLAN, REPO, V1, V2, Controllers, Ledger
from tests.e2e.test_controller_e2e import CANARY, PROMOTED_STEPS, replicas
from tests.helpers.keys import write_principal_key

pytestmark = pytest.mark.kube

ERROR_RATE = HealthCheck(
    name="error-rate",
    query=(
        'sum(rate(http_requests_total{{canary_selector},code=~"5.."}[5s]))'
        " / sum(rate(http_requests_total{{canary_selector}}[5s]))"
    ),
    op="LE",
    threshold=0.05,
    interval_seconds=1,
    count=3,
    failure_limit=2,
    steps=None,
    no_data=NoDataRule(60, "ROLLBACK"),
)


@dataclass
class Analysis:
    """The metrics of the test's target, the Prometheus scraping them, and steward-monitor."""

    tmp: Path
    ledger: Ledger
    source: MetricsSource
    prometheus: PrometheusServer
    key_file: Path
    monitors: list[Child]

    def policy(self, check: HealthCheck = ERROR_RATE) -> None:
        self.ledger.ok(
            self.ledger.flow.policy(
                namespace=self.source.namespace, plan=FAST_PLAN, analysis=(check,)
            )
        )

    def start_monitor(self) -> Child:
        port_file = self.tmp / f"monitor-{len(self.monitors)}.port"
        child = start_python(
            ["-m", "monitor", "--server", self.ledger.address, "--key", str(self.key_file),
             "--prometheus", self.prometheus.url, "--port-file", str(port_file)],
            self.tmp / "monitor.log",
            name="steward-monitor",
            cwd=REPO,
            append=True,
        )  # fmt: skip
        wait_for_port_file(port_file, 30, child=child)
        self.monitors.append(child)
        return child

    def reports(self, p: bytes) -> list[tuple[bytes, HealthReported]]:
        out = []
        for e in self.ledger.client.read(0):
            payload = e.body.payload
            if isinstance(payload, HealthReported) and payload.proposal == p and payload.checks:
                out.append((e.body.event_id, payload))
        return out


@pytest.fixture
def analysis(tmp_path: Path, ledger: Ledger, kube_namespace: str) -> Iterator[Analysis]:
    source = MetricsSource(kube_namespace, "model-server").start()
    prometheus = PrometheusServer([source.address], workdir=tmp_path / "prometheus").start()
    key_file = write_principal_key(ledger.cast, "monitor", tmp_path)
    a = Analysis(tmp_path, ledger, source, prometheus, key_file, [])
    try:
        yield a
    finally:
        for child in a.monitors:
            child.stop()
        prometheus.close()
        source.stop()


def last_reason(ledger: Ledger, p: bytes) -> str:
    return ledger.state().rollouts[p].last_reason


def test_healthy_metrics_promote_with_the_samples_on_the_log(
    analysis: Analysis, ledger: Ledger, controllers: Controllers, apps: client.AppsV1Api
) -> None:
    ns = analysis.source.namespace
    analysis.source.set("stable", rps=40)
    analysis.source.set("canary", rps=20, error_ratio=0.01)
    analysis.policy()
    controllers.start()
    analysis.start_monitor()
    p, _ = ledger.approved(ns)
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 90)
    assert ledger.steps(p) == PROMOTED_STEPS
    (_id, passed), *_ = [r for r in analysis.reports(p) if r[1].checks[0].verdict == "PASS"]
    values = [s.value for s in passed.checks[0].samples if s.value is not None]
    assert len(values) == 3 and all(abs(v - 0.01) < 0.005 for v in values)
    advanced = next(
        e.body.payload.reason
        for e in ledger.client.read(0)
        if getattr(e.body.payload, "phase", "") == "ADVANCED" and e.body.payload.step == 2
    )
    assert "checks passed: error-rate: 3 of 3 measurements" in advanced
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 60)
    assert replicas(apps, ns) == (4, 0, V2)


def test_a_bad_error_rate_rolls_back_after_the_failure_limit(
    analysis: Analysis, ledger: Ledger, controllers: Controllers, apps: client.AppsV1Api
) -> None:
    ns = analysis.source.namespace
    analysis.source.set("stable", rps=40)
    analysis.source.set("canary", rps=20, error_ratio=0.3)
    analysis.policy()
    controllers.start()
    analysis.start_monitor()
    p, _ = ledger.approved(ns)
    wait_for("ROLLED_BACK", lambda: ledger.phase(p) == "ROLLED_BACK", 90)
    reason = last_reason(ledger, p)
    assert "step 1 check failed: error-rate:" in reason and "is not LE 0.05" in reason
    assert "(2 of failure limit 2)" in reason
    failed = analysis.reports(p)[-1][1].checks[0]
    assert failed.verdict == "FAIL"
    assert [s.value for s in failed.samples if s.value is not None][-1] == pytest.approx(
        0.3, abs=0.05
    )
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 60)
    assert replicas(apps, ns) == (4, 0, V1)


@pytest.mark.parametrize("cause", ["no data", "Prometheus down"])
def test_without_data_the_step_holds_then_rolls_back_at_the_deadline(
    analysis: Analysis,
    ledger: Ledger,
    controllers: Controllers,
    apps: client.AppsV1Api,
    cause: str,
) -> None:
    ns = analysis.source.namespace
    analysis.source.set("stable", rps=40)
    if cause == "no data":
        analysis.source.absent("canary")  # the canary serves no metrics at all
    else:
        analysis.source.set("canary", rps=20)
        analysis.prometheus.stop()
    analysis.policy(dataclasses.replace(ERROR_RATE, no_data=NoDataRule(12, "ROLLBACK")))
    controllers.start()
    analysis.start_monitor()
    p, _ = ledger.approved(ns)
    wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p), 60)
    wait_for("two inconclusive reports", lambda: len(analysis.reports(p)) >= 2, 30)
    assert ledger.phase(p) == "ADVANCED"  # held while the deadline runs
    latest = analysis.reports(p)[-1][1].checks[0]
    assert latest.verdict == "INCONCLUSIVE" and all(s.value is None for s in latest.samples)
    expected = "no data" if cause == "no data" else "Prometheus unreachable"
    assert expected in latest.samples[-1].detail
    wait_for("ROLLED_BACK", lambda: ledger.phase(p) == "ROLLED_BACK", 60)
    reason = last_reason(ledger, p)
    assert "check error-rate has no verdict 12s after the step began" in reason
    wait_for("canary removed", lambda: read_deployment(apps, ns, CANARY) is None, 60)
    assert replicas(apps, ns) == (4, 0, V1)


def test_a_monitor_restarted_mid_step_reports_nothing_twice(
    analysis: Analysis, ledger: Ledger, controllers: Controllers
) -> None:
    analysis.source.set("stable", rps=40)
    analysis.source.set("canary", rps=20)
    analysis.policy(dataclasses.replace(ERROR_RATE, count=6))
    controllers.start()
    first = analysis.start_monitor()
    p, _ = ledger.approved(analysis.source.namespace)
    wait_for("two reports", lambda: len(analysis.reports(p)) >= 2, 60)
    first.kill()
    analysis.start_monitor()
    wait_for("PROMOTED", lambda: ledger.phase(p) == "PROMOTED", 90)
    reports = analysis.reports(p)
    counts = [len(r.checks[0].samples) for _id, r in reports]
    assert counts == list(range(1, len(counts) + 1)), counts
    assert len({i for i, _r in reports}) == len(reports)


def test_a_verdict_that_contradicts_its_values_is_refused(
    analysis: Analysis, ledger: Ledger, controllers: Controllers
) -> None:
    analysis.source.absent("canary")
    analysis.policy()
    controllers.start()  # no monitor: the gate stays shut
    p, _ = ledger.approved(analysis.source.namespace)
    wait_for("step 1", lambda: (1, 50, "ADVANCED") in ledger.steps(p), 60)
    query = render_query(ERROR_RATE, Target(analysis.source.namespace, "model-server"))
    bad = tuple(Sample(1000 * i, 0.5, "") for i in range(3))
    lie = CheckEvidence("error-rate", query, 1, bad, "PASS")
    with pytest.raises(LedgerRpcError) as refused:
        ledger.ok(ledger.flow.health(p, 1, True, checks=(lie,)))
    assert refused.value.violation_code == "HEALTH_VERDICT_MISMATCH"
    assert ledger.phase(p) == "ADVANCED"
    # The auditor flags the same report where it reaches a log around the ledger:
    # tests/unit/test_audit_tamper.py ("health verdict contradicting its samples").
