"""Prometheus metrics of the controller, served over HTTP by prometheus_client.

Gauges and counters are computed at scrape time from what the controller already holds (the
latest rollout views and the replayer's counts), so a rollout's series appear and disappear
with it and the counts survive restarts (they are part of the replay snapshot):

* ``steward_rollout_phase{namespace,deployment,proposal,phase}`` 1 for the rollout's current
  ledger phase, 0 for the others (one series per phase, kube-state-metrics style);
* ``steward_rollout_weight`` / ``steward_rollout_step`` / ``steward_rollout_approvals``;
* ``steward_events_applied_total`` / ``steward_invalid_events_total``: entries folded, and
  records skipped because they did not decode or broke a rule (forged, unsigned, injected);
* ``steward_controller_leader`` 1 while this process holds the Lease;
* ``steward_notifications_delivered_total{sink}`` / ``steward_notifications_dead_lettered_total{sink}``
  / ``steward_notifications_pending{sink}``: per outlet of controller.notify (``kubernetes-events``
  or ``sink-<hash of the URL>``, never the URL), since this process started;
* ``steward_kill_switch_reaction_seconds`` (histogram): from the kill switch entry's
  ``received_at`` (the ledger's clock) to this controller observing the canary at 0 replicas
  through its watch. Observed by the leader only, so a sum over replicas counts each stop once.
  Emergency stops by annotation are not in it: the canary is stopped before that kill switch
  is even recorded.

Structured logs: ``controller.main.JsonFormatter`` already writes JSON lines.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.notify import OutletStats
from controller.service import PHASES
from controller.view import RolloutView

if TYPE_CHECKING:
    from controller.runtime import Controller

log = logging.getLogger("steward.controller.metrics")

# Kill switches must act within about half a second (docs/DESIGN.md §2.3): resolution around that bound.
REACTION_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
LABELS = ("namespace", "deployment", "proposal")


def _labels(v: RolloutView) -> list[str]:
    return [v.namespace, v.deployment, v.proposal_hex]


@dataclass
class KillTimer:
    """Pure bookkeeping of kill-switch reactions; the clock and the ledger lookup are outside.

    A reaction starts when a view shows a kill switch in scope while the canary still has
    replicas, and ends at the first later view showing the canary at 0.
    """

    pending: dict[tuple[bytes, int], int] = field(default_factory=dict)  # (proposal, seq) -> seen
    finished: set[tuple[bytes, int]] = field(default_factory=set)

    def update(
        self, views: Iterable[RolloutView], kill_seqs: Mapping[bytes, int], now_ms: int
    ) -> list[tuple[bytes, int, int]]:
        """Reactions finished by these views: (proposal, kill switch seq, observed at ms)."""
        done: list[tuple[bytes, int, int]] = []
        for v in views:
            seq = kill_seqs.get(v.proposal)
            if seq is None:
                # Released (or never engaged): nothing left to time for this proposal. A stop
                # still pending ends here if the canary is now at 0: the view showing it came
                # after the release (views lag the cluster), but the canary did stop.
                for key in [k for k in self.pending if k[0] == v.proposal]:
                    del self.pending[key]
                    if v.canary_replicas == 0:
                        self.finished.add(key)
                        done.append((v.proposal, key[1], now_ms))
                continue
            key = (v.proposal, seq)
            if key in self.finished:
                continue
            if v.canary_replicas > 0:
                self.pending.setdefault(key, now_ms)
            elif key in self.pending or _stopped_by(v, seq):
                # A fast stop may finish before any view showed the canary still up: the
                # reaction still ends here (it is timed from the entry's received_at).
                self.pending.pop(key, None)
                self.finished.add(key)
                done.append((v.proposal, seq, now_ms))
        return done


# Phases in which a kill switch stops a running canary: the rollout was under way, or has just
# been rolled back by that very stop.
_STOPPABLE = frozenset({"STARTED", "ADVANCED", "PAUSED", "ROLLED_BACK"})


def _stopped_by(v: RolloutView, kill_seq: int) -> bool:
    """Whether the kill switch at `kill_seq` can have stopped this rollout.

    A rollout rolled back BEFORE the kill switch (a failed eval, an earlier stop) was not
    stopped by it: timing it would record the kill switch's age as a reaction. Its rollback
    is the last entry naming the proposal, so it must come after the kill switch.
    """
    if v.phase not in _STOPPABLE:
        return False
    return v.phase != "ROLLED_BACK" or v.last_seq > kill_seq


class _StateCollector(Collector):
    def __init__(self, metrics: ControllerMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        views = self.m.views
        phase = GaugeMetricFamily(
            "steward_rollout_phase",
            "1 for the rollout's current ledger phase, 0 for the others",
            labels=[*LABELS, "phase"],
        )
        weight = GaugeMetricFamily(
            "steward_rollout_weight", "canary weight in percent", labels=LABELS
        )
        step = GaugeMetricFamily(
            "steward_rollout_step", "current step of the policy's plan", labels=LABELS
        )
        approvals = GaugeMetricFamily(
            "steward_rollout_approvals",
            "valid approvals bound to the proposal's evidence",
            labels=LABELS,
        )
        for v in views:
            for p in PHASES:
                phase.add_metric([*_labels(v), p], 1.0 if v.phase == p else 0.0)
            weight.add_metric(_labels(v), v.weight)
            step.add_metric(_labels(v), v.step)
            approvals.add_metric(_labels(v), len(v.approvals))
        yield from (phase, weight, step, approvals)
        applied, invalid = self.m.counts()
        yield CounterMetricFamily(
            "steward_events_applied", "log entries folded into the state", value=applied
        )
        yield CounterMetricFamily(
            "steward_invalid_events",
            "records skipped: undecodable or breaking a rule",
            value=invalid,
        )
        yield GaugeMetricFamily(
            "steward_controller_leader",
            "1 while this process holds the Lease",
            value=1.0 if self.m.is_leader() else 0.0,
        )
        delivered = CounterMetricFamily(
            "steward_notifications_delivered",
            "notifications an outlet delivered (Kubernetes Events, each webhook sink)",
            labels=["sink"],
        )
        dead = CounterMetricFamily(
            "steward_notifications_dead_lettered",
            "notifications an outlet gave up on after its last attempt",
            labels=["sink"],
        )
        pending = GaugeMetricFamily(
            "steward_notifications_pending", "notifications queued for an outlet", labels=["sink"]
        )
        for o in self.m.notifications():
            delivered.add_metric([o.key], o.delivered)
            dead.add_metric([o.key], o.dead_lettered)
            pending.add_metric([o.key], o.pending)
        yield from (delivered, dead, pending)


class ControllerMetrics:
    """The controller's metrics in their own registry (so tests and processes never collide)."""

    def __init__(
        self,
        counts: Callable[[], tuple[int, int]],
        is_leader: Callable[[], bool] = lambda: True,
        registry: CollectorRegistry | None = None,
        notifications: Callable[[], list[OutletStats]] = list,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.counts = counts
        self.is_leader = is_leader
        self.notifications = notifications
        self.views: list[RolloutView] = []
        self.timer = KillTimer()
        self.reaction = Histogram(
            "steward_kill_switch_reaction_seconds",
            "kill switch entry received_at (ledger clock) to the canary observed at 0 replicas",
            buckets=REACTION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))

    def update(
        self, views: list[RolloutView], kill_seqs: Mapping[bytes, int], now_ms: int
    ) -> list[tuple[bytes, int, int]]:
        self.views = list(views)
        return self.timer.update(views, kill_seqs, now_ms)

    def observe_reaction(self, received_at_ms: int, observed_ms: int) -> float:
        seconds = max(0.0, (observed_ms - received_at_ms) / 1000)
        self.reaction.observe(seconds)
        return seconds


@dataclass
class MetricsServer:
    metrics: ControllerMetrics
    port: int
    _server: Any
    _thread: threading.Thread
    _stop: Callable[[], None]

    def stop(self) -> None:
        self._stop()
        self._server.shutdown()
        self._server.server_close()


def _kill_seqs(controller: Controller) -> dict[bytes, int]:
    """proposal -> seq of the engaged kill switch covering it."""
    replayer = controller.replayer
    with replayer.lock:
        ls = replayer.state.ledger
        out = {}
        for h, p in ls.proposals.items():
            scope = ls.kill_switch_for(p)
            if scope is not None:
                out[h] = ls.kill_switches[scope]
        return out


def attach(
    controller: Controller,
    *,
    registry: CollectorRegistry | None = None,
    now_ms: Callable[[], int] | None = None,
) -> tuple[ControllerMetrics, Callable[[], None]]:
    """Metrics fed by the controller loop; returns them and a function that stops the worker.

    The listener runs on the loop's thread, on the kill-switch path: it only does arithmetic.
    Looking up an entry's ``received_at`` is an RPC, so a worker thread does it.
    """
    from ledger.clock import now_ms as wall_ms

    clock = now_ms or wall_ms
    replayer = controller.replayer

    def counts() -> tuple[int, int]:
        with replayer.lock:
            return replayer.state.applied, replayer.state.invalid

    notifier = getattr(controller, "notifier", None)  # a controller-shaped test object: none
    metrics = ControllerMetrics(
        counts,
        lambda: controller.is_leader,
        registry,
        notifier.stats if notifier is not None else list,
    )
    work: queue.Queue[tuple[int, int] | None] = queue.Queue()

    def listener(views: list[RolloutView]) -> None:
        for _proposal, seq, seen in metrics.update(views, _kill_seqs(controller), clock()):
            if controller.is_leader:
                work.put((seq, seen))

    def worker() -> None:
        received: dict[int, int] = {}
        while (item := work.get()) is not None:
            seq, seen = item
            try:
                if seq not in received:
                    received[seq] = controller.executor.ledger.get(seq).entry.received_at
                took = metrics.observe_reaction(received[seq], seen)
                log.info("kill_switch_reaction seq=%d seconds=%.3f", seq, took)
            except Exception as exc:  # a metric must never take the controller down
                log.warning("kill switch reaction not measured seq=%d error=%s", seq, exc)

    thread = threading.Thread(target=worker, name="metrics-kill-timer", daemon=True)
    thread.start()
    controller.add_listener(listener)
    return metrics, lambda: work.put(None)


def serve(controller: Controller, listen: str) -> MetricsServer:
    """Attach metrics to `controller` and serve ``/metrics`` on HOST:PORT (port 0: a free one)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(f"metrics address {listen!r}: expected HOST:PORT")
    metrics, stop = attach(controller)
    server, thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=metrics.registry)
    bound = int(server.server_address[1])
    log.info("metrics listening address=%s:%d", host or "0.0.0.0", bound)
    return MetricsServer(metrics, bound, server, thread, stop)
