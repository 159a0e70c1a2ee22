"""steward-monitor against a real ledger server and a real Prometheus scraping a metrics
endpoint the test controls: its reports carry every sample and a verdict the ledger
recomputes; errors are inconclusive samples; a restart reports nothing twice.

The rollout steps are signed here with the controller's key (no cluster: the e2e tests run
the controller, tests/e2e/test_analysis_e2e.py)."""

from __future__ import annotations

import itertools
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.processes import Child, start_python, wait_for, wait_for_port_file
from infra.prometheus import MetricsSource, PrometheusServer
from ledger.client import LedgerClient
from ledger.formats import HealthCheck, HealthReported, LogEntry, NoDataRule, PlanStep
from ledger.scenario import Cast, Flow, followed_state

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
    no_data=NoDataRule(120, "ROLLBACK"),
)
PLAN = (PlanStep(10, 0, False), PlanStep(50, 0, True), PlanStep(100, 0, False))


@dataclass
class Ledger:
    client: LedgerClient
    flow: Flow
    address: str
    workdir: Path

    def append(self, event: object) -> bytes:
        return self.client.append(event).leaf_hash  # type: ignore[arg-type]

    def reports(self) -> list[tuple[LogEntry, HealthReported]]:
        out = []
        for e in self.client.read(0):
            if isinstance(e.body.payload, HealthReported) and e.body.payload.checks:
                out.append((e, e.body.payload))
        return out

    def at_gated_step(self, check: HealthCheck = ERROR_RATE) -> bytes:
        """Genesis, grants, a policy with `check`, and a rollout at its gated step 1."""
        f = self.flow
        for event in (f.genesis(), *f.grants(), f.policy(plan=PLAN, analysis=(check,))):
            self.append(event)
        p = self.append(f.propose())
        evals = (self.append(f.eval(p, "safety", 0.99)), self.append(f.eval(p, "quality", 0.9)))
        self.append(f.approve(p, evals, "alice"))
        self.append(f.approve(p, evals, "bob"))
        self.append(f.step(p, 0, 10, "STARTED"))
        self.append(f.step(p, 1, 50, "ADVANCED"))
        return p


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    cast = Cast.create(seed="monitor-it")
    cast.checkpoint_key.save(tmp_path / "ledger.pem")
    cast["monitor"].key.save(tmp_path / "monitor.pem")
    port_file = tmp_path / "ledger.port"
    server = start_python(
        ["-m", "ledger.cli", "serve", "--db", str(tmp_path / "log.db"),
         "--checkpoint-key", str(tmp_path / "ledger.pem"), "--listen", "127.0.0.1:0",
         "--port-file", str(port_file)],
        tmp_path / "ledger.log",
        name="steward serve",
    )  # fmt: skip
    with server:
        address = f"127.0.0.1:{wait_for_port_file(port_file, 30, child=server)}"
        client = LedgerClient(address)
        flow = Flow(cast, state=followed_state(client.read))
        try:
            yield Ledger(client, flow, address, tmp_path)
        finally:
            client.close()


def start_monitor(ledger: Ledger, prometheus: PrometheusServer, name: str = "monitor") -> Child:
    port_file = ledger.workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    child = start_python(
        ["-m", "monitor", "--server", ledger.address, "--key", str(ledger.workdir / "monitor.pem"),
         "--prometheus", prometheus.url, "--metrics-listen", "127.0.0.1:0",
         "--port-file", str(port_file)],
        ledger.workdir / f"{name}.log",
        name="steward-monitor",
        append=True,
    )  # fmt: skip
    child.metrics_port = wait_for_port_file(port_file, 30, child=child)  # type: ignore[attr-defined]
    return child


def last_verdict(ledger: Ledger, verdict: str, timeout: float, child: Child) -> HealthReported:
    def found() -> HealthReported | None:
        reports = ledger.reports()
        if reports and reports[-1][1].checks[0].verdict == verdict:
            return reports[-1][1]
        return None

    return wait_for(f"a {verdict} report on the log", found, timeout, every=0.2, child=child)


def test_healthy_metrics_pass_with_every_sample_on_the_log(
    ledger: Ledger, prometheus: PrometheusServer, metrics_source: MetricsSource
) -> None:
    metrics_source.set("stable", rps=30)
    metrics_source.set("canary", rps=20, error_ratio=0.0)
    ledger.at_gated_step()
    with start_monitor(ledger, prometheus) as monitor:
        passed = last_verdict(ledger, "PASS", 60, monitor)
        metrics = (
            urllib.request.urlopen(
                f"http://127.0.0.1:{monitor.metrics_port}/metrics"  # type: ignore[attr-defined]
            )
            .read()
            .decode()
        )
    (evidence,) = passed.checks
    assert passed.healthy and evidence.query.startswith(
        'sum(rate(http_requests_total{namespace="models",app="model-server",track="canary",'
    )
    values = [s.value for s in evidence.samples if s.value is not None]
    assert len(values) == 3 and all(v == 0.0 for v in values)
    # Before the first scrape Prometheus has nothing: those samples are inconclusive, named.
    assert all(s.detail == "no data" for s in evidence.samples if s.value is None)
    assert re.search(r'steward_monitor_reports_total\{verdict="PASS"\} 1\.0', metrics)
    assert 'steward_monitor_measurements_total{check="error-rate",outcome="value"} 3.0' in metrics


def test_a_bad_error_rate_fails_at_the_failure_limit(
    ledger: Ledger, prometheus: PrometheusServer, metrics_source: MetricsSource
) -> None:
    metrics_source.set("stable", rps=30)
    metrics_source.set("canary", rps=20, error_ratio=0.4)
    ledger.at_gated_step()
    with start_monitor(ledger, prometheus) as monitor:
        failed = last_verdict(ledger, "FAIL", 60, monitor)
    values = [s.value for s in failed.checks[0].samples if s.value is not None]
    assert len(values) == 2 and all(abs(v - 0.4) < 0.05 for v in values)  # the limit is 2
    assert not failed.healthy


def test_prometheus_down_is_inconclusive_and_says_so(
    ledger: Ledger, prometheus: PrometheusServer, metrics_source: MetricsSource
) -> None:
    metrics_source.set("canary", rps=20)
    prometheus.stop()
    ledger.at_gated_step()
    with start_monitor(ledger, prometheus) as monitor:
        wait_for("two reports", lambda: len(ledger.reports()) >= 2, 30, child=monitor)
        latest = ledger.reports()[-1][1].checks[0]
        assert latest.verdict == "INCONCLUSIVE"
        assert all(s.value is None for s in latest.samples)
        assert "Prometheus unreachable" in latest.samples[-1].detail
        prometheus.restart()  # back up: the run goes on to its verdict
        last_verdict(ledger, "PASS", 60, monitor)


def test_a_restarted_monitor_reports_no_measurement_twice(
    ledger: Ledger, prometheus: PrometheusServer, metrics_source: MetricsSource
) -> None:
    metrics_source.set("canary", rps=20)
    slow = HealthCheck(**{**ERROR_RATE.__dict__, "count": 6})
    ledger.at_gated_step(slow)
    first = start_monitor(ledger, prometheus, "first")
    with first:
        wait_for("three reports", lambda: len(ledger.reports()) >= 3, 60, child=first)
        first.kill()  # mid-step, without a goodbye
    with start_monitor(ledger, prometheus, "second") as second:
        last_verdict(ledger, "PASS", 60, second)
    reports = ledger.reports()
    counts = [len(r.checks[0].samples) for _e, r in reports]
    assert counts == list(range(1, len(counts) + 1)), counts  # each measurement once, in order
    ids = [e.body.event_id for e, _r in reports]
    assert len(set(ids)) == len(ids)
    for (_e1, before), (_e2, after) in itertools.pairwise(reports):
        assert after.checks[0].samples[:-1] == before.checks[0].samples
