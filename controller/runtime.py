"""The controller loop: replay → fold → plan → execute → mirror, woken by the log and watches.

Threads: the Replayer follows the log store; one watch per (namespace, kind) keeps the cluster
cache; the LeaderElector renews the Lease. Each of them sets ``wake``; the loop then plans from
one consistent state (under the replayer's lock) and, only when leader, executes. A timer tick
re-plans anyway so hold times and not-ready grace periods expire on time.

Nothing the loop does under the fold lock looks at every proposal of the ledger: which
proposals name which target is kept by a TargetIndex (brought up to date a bounded number of
proposals per hold of the lock), and the views of every proposal (what `kubectl steward get`,
the metrics and the ModelRollout mirror show) are built by a thread of their own, a chunk per
hold (controller.view.views_in_chunks). At a million entries a reconcile held the lock 0.9-1.0 s
for them, and a kill switch's fold waited behind it.

Every process replays and observes, leader or not, so a standby that takes over acts on a
state that is already current. On restart the first plan reconciles: it applies what the log
implies (finishing a step recorded but not applied, a stop or a promotion half done).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from controller.executor import ClusterCache, Executor, Outcome
from controller.kube_events import KubeEventsOutlet
from controller.leader import LeaderElector
from controller.mirror import Mirror
from controller.notices import Notice, for_namespaces, notices_for
from controller.notify import (
    DeadLetters,
    Notifier,
    Outlet,
    Position,
    PositionFile,
    RetryPolicy,
    WebhookOutlet,
    sink_key,
)
from controller.planner import Action, ObservedTarget, PlannerConfig, plan
from controller.replay import Replayer
from controller.seams import LedgerAccess
from controller.target_index import TargetIndex
from controller.view import RolloutView, ViewCache, views_in_chunks
from ledger.clock import now_ms
from ledger.errors import FormatError
from ledger.formats import LogEntry, Target, decode_log_entry
from ledger.heap import settle_heap, settling_collector, tune_collector
from ledger.keys import PrivateKey

log = logging.getLogger("steward.controller")

# The views thread rests as long as its last build took, up to this (views are for people).
VIEWS_REST_MAX_SECONDS = 10.0
TARGET_CHUNK = 1024  # proposals indexed per hold of the fold lock (see controller.snapshot's
# BATCH_WINDOW: a restored proposal's target is decoded a window at a time)


@dataclass(frozen=True)
class ControllerConfig:
    namespaces: tuple[str, ...]
    identity: str
    lease_namespace: str | None = None  # None: no election, this process always acts
    lease_name: str = "steward-controller"
    lease_seconds: int = 5
    renew_seconds: float = 1.5
    tick_seconds: float = 0.25
    mirror: bool = True
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    # Process-wide garbage-collector tuning around the replay (ledger.heap): only for the
    # process entry point (steward-controller), never for a controller inside a test run.
    settle_heap: bool = False
    # Notifications (controller.notify): Kubernetes Events, global webhook sinks (each policy
    # may add its own), where delivery positions and dead letters are kept.
    kube_events: bool = True
    notify_urls: tuple[str, ...] = ()
    notify_state: str | None = None
    notify_dead_letter: str | None = None
    notify_retry: RetryPolicy = field(default_factory=RetryPolicy)
    notify_timeout: float = 5.0


class Controller:
    def __init__(
        self,
        config: ControllerConfig,
        replayer: Replayer,
        ledger: LedgerAccess,
        key: PrivateKey,
        api: client.ApiClient,
    ) -> None:
        if not config.namespaces:
            raise ValueError("the controller needs at least one namespace to manage")
        self.config = config
        self.replayer = replayer
        self.wake = threading.Event()
        self.cache = ClusterCache(api, config.namespaces, on_change=self.wake.set)
        self.executor = Executor(api, self.cache, replayer, ledger, key)
        self.mirror = Mirror(api, self.cache)
        self.leader: LeaderElector | None = None
        if config.lease_namespace:
            self.leader = LeaderElector(
                api,
                config.lease_namespace,
                config.identity,
                name=config.lease_name,
                lease_seconds=config.lease_seconds,
                renew_seconds=config.renew_seconds,
                renew_deadline_seconds=min(config.lease_seconds - 1.0, config.lease_seconds * 0.8),
                on_change=self._leadership_changed,
            )
        self.notifier = self._notifier(config, api)
        replayer.on_fold = self._on_fold
        self.views: list[RolloutView] = []
        self.last_actions: list[Action] = []
        self._listeners: list[Callable[[list[RolloutView]], None]] = []
        self._threads: list[threading.Thread] = []
        self._mirror_wake = threading.Event()
        self._targets = TargetIndex()
        # The last plan's observations and actions, for the views thread to show.
        self._views_wanted: tuple[dict[Target, ObservedTarget], list[Action]] | None = None
        # The views of the last pass, kept where nothing changed (every proposal, each pass).
        self._view_cache = ViewCache()
        self._views_settled = False
        self._views_wake = threading.Event()

    # -- notifications ---------------------------------------------------------------------

    def _notifier(self, config: ControllerConfig, api: client.ApiClient) -> Notifier:
        def source() -> tuple[str, str]:
            ls = self.replayer.state.ledger  # two strings set once by the genesis
            return ls.origin or f"steward.dev/ledger/{ls.ledger}", ls.ledger

        def webhook(url: str) -> Outlet:
            return WebhookOutlet(url, source, config.notify_timeout)

        fixed: list[Outlet] = []
        if config.kube_events:
            fixed.append(KubeEventsOutlet(api, self.cache, config.identity, mirror=config.mirror))
        fixed.extend(webhook(u) for u in config.notify_urls)
        return Notifier(
            fixed,
            PositionFile(Path(config.notify_state) if config.notify_state else None),
            DeadLetters(Path(config.notify_dead_letter) if config.notify_dead_letter else None),
            policy_sinks=self._policy_sinks,
            webhook=webhook,
            retry=config.notify_retry,
            active=lambda: self.is_leader,
        )

    def _policy_sinks(self, notice: Notice) -> list[str]:
        """The webhook URLs of the policies that govern the rollouts a notice is about."""
        urls: list[str] = []
        with self.replayer.lock:
            ls = self.replayer.state.ledger
            for ref in notice.rollouts:
                p = ls.proposals.get(ref.proposal)
                if p is not None:
                    urls.extend(u for u in ls.policy_of(p).notify if u not in urls)
        return urls

    def _notices(self, entry: LogEntry) -> list[Notice]:
        """This controller's notices of an entry (call with the replayer's lock held)."""
        out = []
        for notice in notices_for(entry, self.replayer.state.ledger):
            mine = for_namespaces(notice, self.config.namespaces)
            if mine is not None:
                out.append(mine)
        return out

    def _on_fold(self, entry: LogEntry, position: int) -> None:
        self._targets.note(self.replayer.state, entry)  # a step: its target's latest
        for notice in self._notices(entry):
            self.notifier.offer(notice, position)

    def _recover_notices(self) -> None:
        """Re-offer what the outlets had not delivered before a restart and a snapshot folded.

        Entries after the snapshot are folded (and offered) by the catch-up; those between
        the lowest outlet position and the snapshot are read here, and offered with the
        snapshot's state (a notice is the same from any state at or after its entry)."""
        notifier = self.notifier
        if not notifier.armed:
            return
        # Every outlet with a position, even one whose policy is not folded yet (the state
        # here is only the snapshot's): pruning waits for the caught-up state.
        keys = {*notifier.fixed, *notifier.positions.positions}
        low = notifier.positions.low(keys)
        end = self.replayer.position
        if low is None or low.position + 1 >= end:
            return
        offered = 0
        for record in self.replayer.store.read(low.position + 1, limit=end - low.position - 1):
            try:
                e = decode_log_entry(record.value)
            except FormatError:
                continue
            with self.replayer.lock:
                ls = self.replayer.state.ledger
                if ls.entry_seqs.get(e.leaf_hash) != e.seq:
                    continue  # not a valid entry of this log: never folded
                for notice in self._notices(e):
                    notifier.offer(notice, record.position)
                    offered += 1
        log.info("notifications re-offered from=%d to=%d notices=%d", low.seq, end, offered)

    def _prune_positions(self) -> None:
        """Forget the positions of sinks no policy names any more (caught-up state only: they
        would hold the next restart's re-read back for nothing)."""
        with self.replayer.lock:
            ls = self.replayer.state.ledger
            keys = {
                *self.notifier.fixed,
                *(sink_key(u) for i in ls.policies.values() for u in i.policy.notify),
            }
        self.notifier.positions.prune(keys)

    # -- for layers on top (ControllerService, metrics) ------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.leader.is_leader if self.leader else True

    def add_listener(self, fn: Callable[[list[RolloutView]], None]) -> None:
        """Called with every new list of views (after each plan), from the loop's thread."""
        self._listeners.append(fn)

    # -- running -------------------------------------------------------------------------

    def _leadership_changed(self, leader: bool) -> None:
        if leader:
            self.mirror.forget()
        self.wake.set()

    def start(self, stop: threading.Event) -> None:
        """Load the snapshot, catch up with the log and start the background threads."""
        if self.config.settle_heap:
            tune_collector()  # the replay allocates the long-lived state
        self.replayer.load_snapshot()
        self._recover_notices()
        started = time.monotonic()
        self.replayer.catch_up()
        if self.config.settle_heap:
            settle_heap()
            # Until the first views pass is built: it decodes every restored proposal and
            # builds every view, long-lived objects that small collections scan a batch at a
            # time (ledger.heap; a 965 ms pause at ten million entries otherwise).
            settling_collector()
        st = self.replayer.state
        # A first start notifies from here on, not the whole history.
        self.notifier.arm(Position(st.ledger.size - 1, self.replayer.last_position))
        self._prune_positions()
        log.info(
            "replayed size=%d applied=%d invalid=%d ms=%.0f snapshot=%s",
            st.ledger.size,
            st.applied,
            st.invalid,
            (time.monotonic() - started) * 1000,
            self.replayer.loaded_from_snapshot,
        )
        self._spawn("replay", lambda: self.replayer.run(stop, self.wake.set))
        self._spawn("views", lambda: self._views_loop(stop))
        self.cache.start(stop)
        if self.leader is not None:
            leader = self.leader
            self._spawn("lease", lambda: leader.run(stop))
        if self.config.mirror:
            self._spawn("mirror", lambda: self._mirror_loop(stop))
        if not self.cache.wait_synced(60):
            raise RuntimeError("the watch caches did not sync within 60 s")

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def run(self, stop: threading.Event) -> None:
        self.start(stop)
        while not stop.is_set():
            self.wake.wait(self.config.tick_seconds)
            self.wake.clear()
            if stop.is_set():
                break
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile failed; retrying on the next wake")
                time.sleep(0.2)
        for t in self._threads:
            t.join(timeout=3)
        self.notifier.close()

    def _mirror_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._mirror_wake.wait(1.0)
            self._mirror_wake.clear()
            if stop.is_set() or not self.is_leader:
                continue
            try:
                self.mirror.sync(self.views)
            except Exception:
                log.exception("mirror sync failed; retrying")
                time.sleep(0.5)

    def _views_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._views_wake.wait(1.0)
            self._views_wake.clear()
            wanted = self._views_wanted
            if stop.is_set() or wanted is None:
                continue
            began = time.monotonic()
            try:
                self.refresh_views(*wanted)
            except Exception:
                log.exception("views failed; retrying on the next plan")
                time.sleep(0.5)
                continue
            if self.config.settle_heap and not self._views_settled:
                tune_collector()  # the first pass is built: back to the steady thresholds
                self._views_settled = True
            # Every plan asks for new views (4 a second); building them takes 2 s at a million
            # entries (bench.replay), so without a pause this thread would hold a core, and
            # the interpreter, for views nobody may be reading: it rests as long as it worked.
            stop.wait(min(VIEWS_REST_MAX_SECONDS, time.monotonic() - began))

    def refresh_views(
        self, observed: dict[Target, ObservedTarget], actions: list[Action]
    ) -> list[RolloutView]:
        """Build the views of every proposal (the fold lock a chunk at a time), publish them
        to the listeners and wake the mirror."""
        while True:
            views = views_in_chunks(
                self.replayer.lock,
                lambda: self.replayer.state,
                observed,
                actions,
                cache=self._view_cache,
            )
            if views is not None:
                break
        self.views = views
        for fn in self._listeners:
            fn(views)
        if self.config.mirror:
            self._mirror_wake.set()  # written by its own thread: never in the way of a stop
        return views

    def _index_targets(self) -> None:
        """Bring the target index up to date, TARGET_CHUNK proposals per hold of the lock (the
        first plan after a restart reads every restored proposal's target), after the evidence
        of the restored proposals is read without the lock (the plan reads some of it)."""
        if self.replayer.snapshots is not None:
            self.replayer.snapshots.read_evidence(self.replayer.source)
        while True:
            with self.replayer.lock:
                if self._targets.update(self.replayer.state, TARGET_CHUNK):
                    return

    def reconcile_once(self) -> list[Outcome]:
        self._index_targets()
        with self.replayer.lock:
            state = self.replayer.state
            self._targets.update(state)  # what was folded since: a few proposals at most
            observed = self.cache.observe(self._targets.targets())
            actions = plan(state, observed, now_ms(), self.config.planner, self._targets)
        self.last_actions = actions
        self._views_wanted = (observed, actions)
        self._views_wake.set()
        if not self.is_leader:
            return []
        outcomes = self.executor.execute(actions)
        if any(o.ok for o in outcomes):
            self.wake.set()  # something changed: plan again right away (failures wait a tick)
        return outcomes
