"""The monitor's loop: follow the log, measure what is due, sign and submit the reports, and
serve its own metrics.

One thread follows the log through the gRPC client and folds it (checked by the rules, like any
reader) into a :class:`~ledger.state.LedgerState` and the :class:`~monitor.schedule.Evidence`
read back from it; the main loop sleeps until the next measurement is due, queries Prometheus
outside the lock, and submits one report per measurement. Before it measures anything it has
read the whole log, so a restarted monitor continues every run where the log left it.

A report the ledger refuses is counted by its code and not retried with another body: a
``DUPLICATE_EVENT_ID`` means that measurement is already on the log (another monitor, or this
one before a restart), and ``HEALTH_NOT_FOR_CURRENT_RUN`` that the run ended meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ledger.client import LedgerClient, LedgerRpcError
from ledger.events import new_body, sign
from ledger.formats import LogEntry, Sample
from ledger.keys import PrivateKey
from ledger.rules import check
from ledger.state import LedgerState
from monitor.prometheus import Prometheus
from monitor.schedule import Due, Evidence, due, next_due_ms, report, running

log = logging.getLogger("steward.monitor")


@dataclass
class MonitorMetrics:
    """What /metrics shows about the monitor itself."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.measurements = Counter(
            "steward_monitor_measurements_total",
            "Measurements taken, by check and outcome (value, or inconclusive)",
            ["check", "outcome"],
            registry=r,
        )
        self.query_seconds = Histogram(
            "steward_monitor_query_seconds",
            "Time one Prometheus query took, answer or error",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.check_seconds = Histogram(
            "steward_monitor_check_seconds",
            "Time one check took end to end: query, sign, submit",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.reports = Counter(
            "steward_monitor_reports_total",
            "Health reports accepted by the ledger, by verdict",
            ["verdict"],
            registry=r,
        )
        self.refused = Counter(
            "steward_monitor_reports_refused_total",
            "Health reports the ledger refused, by code",
            ["code"],
            registry=r,
        )
        self.last_value = Gauge(
            "steward_monitor_last_value",
            "The last conclusive value of a check on a running step",
            ["proposal", "check"],
            registry=r,
        )
        self.log_size = Gauge("steward_monitor_log_size", "Entries folded from the log", registry=r)
        self.running = Gauge(
            "steward_monitor_runs", "Rollout steps gated by checks now running", registry=r
        )


@dataclass
class Monitor:
    client: LedgerClient
    key: PrivateKey
    prometheus: Prometheus
    metrics: MonitorMetrics = field(default_factory=MonitorMetrics)
    clock: Callable[[], float] = time.time
    max_sleep: float = 1.0  # new runs appear on the log: look at least this often
    state: LedgerState = field(default_factory=LedgerState)
    evidence: Evidence = field(default_factory=Evidence)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- the log ---------------------------------------------------------------------------

    def fold(self, e: LogEntry) -> None:
        with self._lock:
            violation = check(self.state, e)
            if violation is not None:  # the ledger checked it; a reader still does not trust it
                raise RuntimeError(f"the log does not verify at seq {e.seq}: {violation}")
            self.state.apply(e)
            self.evidence.observe(self.state, e)
            self.metrics.log_size.set(self.state.size)
        self._changed.set()

    def catch_up(self) -> None:
        """Fold everything the log holds now (before the first measurement)."""
        for e in self.client.read(self.state.size):
            self.fold(e)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for e in self.client.read(self.state.size, follow=True):
                    self.fold(e)
                    if self._stop.is_set():
                        return
            except LedgerRpcError as exc:
                log.warning("following the log: %s; retrying", exc)
                self._stop.wait(1.0)

    # -- measuring -------------------------------------------------------------------------

    def tick(self) -> list[Due]:
        """Take every measurement due now and submit its report; returns what was due."""
        now = self.now_ms()
        with self._lock:
            todo = due(self.state, self.evidence, now)
            self.metrics.running.set(len(running(self.state)))
        for d in todo:
            self._measure(d)
        return todo

    def _measure(self, d: Due) -> None:
        started = time.perf_counter()
        taken = self.now_ms()
        sample = self.prometheus.measure(d.query, taken)
        self.metrics.query_seconds.observe(time.perf_counter() - started)
        outcome = "value" if sample.value is not None else _outcome(sample)
        self.metrics.measurements.labels(d.check.name, outcome).inc()
        if sample.value is not None:
            self.metrics.last_value.labels(d.proposal.hex()[:16], d.check.name).set(sample.value)
        payload, event_id = report(d, sample, taken)
        with self._lock:
            refs = self.state.binding_refs(payload)
        if d.run not in refs:
            return  # the run ended while Prometheus answered
        body = new_body(
            self.state.ledger, payload, refs=refs, event_id=event_id, issued_at=self.now_ms()
        )
        try:
            self.client.append(sign(body, self.key))
        except LedgerRpcError as exc:
            self.metrics.refused.labels(exc.violation_code or exc.code.name).inc()
            log.info("report on %s refused: %s", d.check.name, exc)
            return
        verdict = payload.checks[0].verdict
        self.metrics.reports.labels(verdict).inc()
        self.metrics.check_seconds.observe(time.perf_counter() - started)
        with self._lock:  # known at once, before the follower reads it back
            self.evidence.record(d.run, d.check.name, payload.checks[0].samples)
        log.info(
            "step %d of %s: %s %s (%s)",
            d.step,
            d.proposal.hex()[:12],
            d.check.name,
            verdict,
            "no value" if sample.value is None else f"{sample.value:g}",
        )

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        self.catch_up()
        follower = threading.Thread(target=self._follow, name="follow-log", daemon=True)
        follower.start()
        while not self._stop.is_set():
            self.tick()
            with self._lock:
                nxt = next_due_ms(self.state, self.evidence, self.now_ms())
                self.evidence.forget_except(r[2] for r in running(self.state))
            wait = self.max_sleep if nxt is None else (nxt - self.now_ms()) / 1000
            self._changed.clear()
            self._changed.wait(min(max(wait, 0.01), self.max_sleep))

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()


def _outcome(sample: Sample) -> str:
    return "no_data" if sample.detail == "no data" else "error"
