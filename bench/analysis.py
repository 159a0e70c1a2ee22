"""Automated analysis: steward-monitor's cost per check, and the time from a metric going bad
to the canary at 0 replicas, measured in one run (docs/ANALYSIS.md).

Everything is real and in its own process: the local control plane (KWOK pods), ``python -m
ledger.server`` on SQLite, ``python -m controller.main``, Prometheus from Debian's package
scraping a metrics source in this process every second, and ``python -m monitor``. The policy
gates step 0 (50%) with one check: the canary's 5xx share over a 5 s window, LE 0.05, every
second, 100 measurements to pass (so it keeps measuring), failing on the first bad one.

Each trial: propose, evals, approvals; wait for the canary's pods and for two passing
measurements on the log; then set the canary's error ratio to 0.5 and take the time; stop the
clock on the first watch event where the canary Deployment has 0 replicas or is gone. The
figure's two parts: bad → the FAIL report's ``received_at`` on the log (Prometheus's scrape,
the rate window and the monitor's interval), then → 0 replicas (the controller's tick, its
stop, the watch; it records ``ROLLED_BACK`` after the stop). The monitor's cost per check is its process's CPU time
over the checks it made in the whole run, and its own histograms of query and end-to-end
time (query, sign, submit).

Run: python -m bench.analysis [--smoke] [--trials N]
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import Report, median, parser, percentile
from bench.killswitch import CANARY, NAME, REPO, V1, V2, CanaryWatch
from infra.kube_workload import target_manifests
from infra.processes import Child, start_python, wait_for, wait_for_port_file

BAD_RATIO = 0.5


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--trials", type=int, default=10)
    args = p.parse_args(argv)
    trials = 2 if args.smoke else args.trials

    from kubernetes import client, utils

    from infra.kube_cluster import LocalCluster
    from infra.prometheus import MetricsSource, PrometheusServer
    from ledger.client import LedgerClient
    from ledger.formats import HealthCheck, NoDataRule, PlanStep
    from ledger.scenario import Cast, Flow, followed_state

    check = HealthCheck(
        name="error-rate",
        query=(
            'sum(rate(http_requests_total{{canary_selector},code=~"5.."}[5s]))'
            " / sum(rate(http_requests_total{{canary_selector}}[5s]))"
        ),
        op="LE",
        threshold=0.05,
        interval_seconds=1,
        count=100,
        failure_limit=1,
        steps=None,
        no_data=NoDataRule(600, "ROLLBACK"),
    )
    report = Report(
        "analysis",
        params={
            "trials": trials,
            "interval_s": 1,
            "scrape_interval_s": 1,
            "rate_window_s": 5,
            "threshold": 0.05,
            "bad_ratio": BAD_RATIO,
            "controller_tick_s": 0.2,
        },
    )
    with tempfile.TemporaryDirectory(prefix="steward-bench-analysis-") as tmp_s:
        tmp = Path(tmp_s)
        cluster = LocalCluster()
        cluster.start()
        try:
            api = cluster.api_client()
            apps = client.AppsV1Api(api)
            ns = f"bench-analysis-{os.getpid()}"
            cluster.kubectl("apply", "-f", str(REPO / "k8s" / "base" / "crd-modelrollouts.yaml"))
            cluster.kubectl("create", "namespace", ns)
            wait_for(
                "the default ServiceAccount",
                lambda: (
                    cluster.kubectl(
                        "get", "serviceaccount", "default", "-n", ns, check=False
                    ).returncode
                    == 0
                ),
                60,
            )
            for manifest in target_manifests(NAME, V1, 4):
                utils.create_from_dict(api, manifest, namespace=ns)
            wait_for(
                "4 ready stable pods",
                lambda: (apps.read_namespaced_deployment(NAME, ns).status.ready_replicas or 0) >= 4,
                60,
            )
            source = MetricsSource(ns, NAME).start()
            prometheus = PrometheusServer([source.address], workdir=tmp / "prometheus").start()
            cast = Cast.create()
            for name, key in (
                ("checkpoint", cast.checkpoint_key),
                ("controller", cast["controller"].key),
                ("monitor", cast["monitor"].key),
            ):
                key.save(tmp / f"{name}.pem")
            db, port_file = tmp / "ledger.db", tmp / "ledger.port"
            with start_python(
                ["-m", "ledger.server", "--db", str(db), "--checkpoint-key",
                 str(tmp / "checkpoint.pem"), "--port-file", str(port_file)],
                tmp / "ledger.log",
                cwd=REPO,
            ) as server:  # fmt: skip
                port = wait_for_port_file(port_file, 60, child=server)
                led = LedgerClient(f"127.0.0.1:{port}")
                flow = Flow(cast, ledger="bench-analysis", state=followed_state(led.read))
                led.append(flow.genesis())
                for grant in flow.grants():
                    led.append(grant)
                plan = (PlanStep(50, 0, True), PlanStep(100, 0, False))
                led.append(flow.policy(namespace=ns, plan=plan, analysis=(check,)))
                with (
                    start_python(
                        ["-m", "controller.main", "--ledger", led.target, "--store",
                         f"sqlite:{db}", "--kubeconfig", str(cluster.kubeconfig), "--key",
                         str(tmp / "controller.pem"), "--namespace", ns, "--snapshot-db",
                         str(tmp / "snap.db"), "--lease-namespace", ns, "--identity", "bench",
                         "--tick-seconds", "0.2", "--not-ready-grace-seconds", "60"],
                        tmp / "controller.log",
                        cwd=REPO,
                    ),
                    _monitor(tmp, led.target, prometheus.url) as (monitor, metrics_url),
                ):  # fmt: skip
                    cpu_before = _cpu_seconds(monitor.pid)
                    results = [_trial(i, led, flow, apps, ns, source) for i in range(trials)]
                    cpu = _cpu_seconds(monitor.pid) - cpu_before
                    metrics = _scrape(metrics_url)
                led.close()
            prometheus.close()
            source.stop()
            api.close()
        finally:
            cluster.stop()

    total = [r["total"] for r in results]
    report.add("metric bad → canary 0, p50", median(total) * 1000, "ms")
    report.add("metric bad → canary 0, max", max(total) * 1000, "ms")
    report.add(
        "  bad → FAIL report on the log, p50", median([r["to_fail"] for r in results]) * 1000, "ms"
    )
    report.add(
        "  FAIL report → canary 0, p50", median([r["to_zero"] for r in results]) * 1000, "ms"
    )
    checks = metrics.get("steward_monitor_measurements_total", 0.0)
    report.add("checks made (whole run)", checks, "checks")
    report.add("monitor CPU per check", cpu / max(checks, 1) * 1000, "ms")
    report.add(
        "monitor query time per check (mean)",
        metrics["steward_monitor_query_seconds_sum"]
        / max(metrics["steward_monitor_query_seconds_count"], 1)
        * 1000,
        "ms",
    )
    report.add(
        "monitor query+sign+submit per check (mean)",
        metrics["steward_monitor_check_seconds_sum"]
        / max(metrics["steward_monitor_check_seconds_count"], 1)
        * 1000,
        "ms",
    )
    report.add("metric bad → canary 0, p99", percentile(total, 99) * 1000, "ms")
    report.emit()
    return 0


class _monitor:
    """steward-monitor as its own process: (the child, its /metrics URL)."""

    def __init__(self, tmp: Path, ledger: str, prometheus: str) -> None:
        self.tmp, self.ledger, self.prometheus = tmp, ledger, prometheus

    def __enter__(self) -> tuple[Child, str]:
        port_file = self.tmp / "monitor.port"
        self.child = start_python(
            ["-m", "monitor", "--server", self.ledger, "--key", str(self.tmp / "monitor.pem"),
             "--prometheus", self.prometheus, "--port-file", str(port_file)],
            self.tmp / "monitor.log",
            cwd=REPO,
        )  # fmt: skip
        port = wait_for_port_file(port_file, 60, child=self.child)
        return self.child, f"http://127.0.0.1:{port}/metrics"

    def __exit__(self, *_exc: object) -> None:
        self.child.stop()


def _trial(i: int, led: Any, flow: Any, apps: Any, ns: str, source: Any) -> dict[str, float]:
    from ledger.formats import HealthReported, RolloutStep

    source.set("stable", rps=40, error_ratio=0.0)
    source.set("canary", rps=20, error_ratio=0.0)
    if i:
        time.sleep(7)  # the last trial's bad requests leave the 5 s rate window first
    p = led.append(flow.propose(f"{V2}-{i}", namespace=ns, deployment=NAME)).leaf_hash
    evals = (
        led.append(flow.eval(p, "safety", 0.99)).leaf_hash,
        led.append(flow.eval(p, "quality", 0.9)).leaf_hash,
    )
    for who in ("alice", "bob"):
        led.append(flow.approve(p, evals, who))

    def passing() -> int:
        n = 0
        for e in led.read(0):
            q = e.body.payload
            if isinstance(q, HealthReported) and q.proposal == p and q.checks:
                n = sum(1 for s in q.checks[0].samples if s.value is not None)
        return n

    wait_for("canary ready", lambda: _canary_ready(apps, ns), 120)
    wait_for("two passing measurements", lambda: passing() >= 2, 60)
    rv = apps.list_namespaced_deployment(ns).metadata.resource_version
    watch = CanaryWatch(apps, ns, rv)
    watch.start()
    bad_at_wall, bad_at = time.time(), time.monotonic()
    source.set("canary", rps=20, error_ratio=BAD_RATIO)
    watch.done.wait(60)
    assert watch.zero_at is not None, "the canary did not reach 0 replicas"

    def fail_report_at() -> float | None:
        for e in led.read(0):
            q = e.body.payload
            if (
                isinstance(q, HealthReported)
                and q.proposal == p
                and q.checks
                and q.checks[0].verdict == "FAIL"
            ):
                return float(e.entry.received_at / 1000)
        return None

    def rolled_back() -> bool:
        return any(
            isinstance(e.body.payload, RolloutStep)
            and e.body.payload.proposal == p
            and e.body.payload.phase == "ROLLED_BACK"
            for e in led.read(0)
        )

    fail_at = wait_for("the FAIL report", fail_report_at, 30)
    # The controller stops the canary first and records ROLLED_BACK after (docs/CONTROLLER.md).
    wait_for("the rollback recorded", rolled_back, 30)
    zero_wall = bad_at_wall + (watch.zero_at - bad_at)
    wait_for("canary removed", lambda: not _canary_exists(apps, ns), 60)
    return {
        "total": watch.zero_at - bad_at,
        "to_fail": fail_at - bad_at_wall,
        "to_zero": zero_wall - fail_at,
    }


def _canary_ready(apps: Any, ns: str) -> bool:
    from infra.kube_workload import read_deployment

    c = read_deployment(apps, ns, CANARY)
    return c is not None and (c.status.ready_replicas or 0) >= 2


def _canary_exists(apps: Any, ns: str) -> bool:
    from infra.kube_workload import read_deployment

    return read_deployment(apps, ns, CANARY) is not None


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape(url: str) -> dict[str, float]:
    """Each metric family's sum over its series, by sample name."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
