"""What the monitor measures next, and the report a measurement makes: pure, so every decision
is a unit test (the loop, the clock, Prometheus and the ledger are :mod:`monitor.service`'s).

A check's run on a step is the samples reported for it since the step's run began (the
``RolloutStep`` entry that every report on that run names in its refs). The log is the
monitor's memory: :class:`Evidence` folds the reports it reads back, so a restarted monitor
continues each run where the log says it is.

* The first measurement of a run is due one interval after the run began (the canary gets that
  long to serve), each next one an interval after the last; a check with a verdict (PASS or
  FAIL), or with as many samples as a report may carry, is not measured again in that run.
* Each report carries the whole run so far for one check, and its event id is
  ``SHA-256("steward/v1/health" ‖ proposal ‖ run ‖ check name ‖ sample count)[:16]``: a
  monitor that restarts, or a second one running by mistake, can only sign the same id again,
  which the ledger records once (``DUPLICATE_EVENT_ID`` for a different body with that id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from ledger.analysis import MAX_SAMPLES, checks_for_step, judge, render_query
from ledger.formats import CheckEvidence, HealthCheck, HealthReported, LogEntry, Sample
from ledger.state import ACTIVE_PHASES, LedgerState


def report_event_id(proposal: bytes, run: bytes, check: str, samples: int) -> bytes:
    data = b"steward/v1/health" + proposal + run + check.encode() + samples.to_bytes(4, "big")
    return hashlib.sha256(data).digest()[:16]


@dataclass
class Evidence:
    """The latest samples reported for each (run, check), read back from the log."""

    samples: dict[tuple[bytes, str], tuple[Sample, ...]] = field(default_factory=dict)

    def observe(self, state: LedgerState, e: LogEntry) -> None:
        """Fold a HealthReported entry (already applied to `state`); others are ignored."""
        p = e.body.payload
        if not isinstance(p, HealthReported) or not p.checks:
            return
        runs = [r for r in e.body.refs if state.entry_types.get(r) == "RolloutStep"]
        if len(runs) != 1:
            return  # a report on a step not running: no run to continue
        for ev in p.checks:
            self.record(runs[0], ev.name, ev.samples)

    def record(self, run: bytes, check: str, samples: tuple[Sample, ...]) -> None:
        known = self.samples.get((run, check), ())
        if len(samples) >= len(known):
            self.samples[(run, check)] = samples

    def forget_except(self, runs: Iterable[bytes]) -> None:
        """Drop the runs that ended (keeps the memory to the rollouts running now)."""
        keep = set(runs)
        self.samples = {k: v for k, v in self.samples.items() if k[0] in keep}


@dataclass(frozen=True)
class Due:
    """A measurement due now: the check, its query as sent, and the run's samples so far."""

    proposal: bytes
    step: int
    run: bytes
    run_started_at: int
    check: HealthCheck
    query: str
    previous: tuple[Sample, ...]


def running(state: LedgerState) -> list[tuple[bytes, int, bytes, int, tuple[HealthCheck, ...]]]:
    """(proposal, step, run entry, run start, checks) of every active run gated by checks."""
    out = []
    for p in state.proposals.values():
        run = p.current_run if p.phase in ACTIVE_PHASES else None
        if run is None:
            continue
        checks = checks_for_step(state.policy_of(p), run.step)
        if checks:
            out.append((p.entry_hash, run.step, run.entry_hash, run.at, checks))
    return out


def due(state: LedgerState, evidence: Evidence, now_ms: int) -> list[Due]:
    """Every measurement due at `now_ms`."""
    out = []
    for proposal, step, run, started_at, checks in running(state):
        target = state.proposals[proposal].proposal.target
        for check in checks:
            previous = evidence.samples.get((run, check.name), ())
            if _finished(check, previous):
                continue
            interval = check.interval_seconds * 1000
            last = previous[-1].taken_at if previous else started_at
            if now_ms < last + interval:
                continue
            query = render_query(check, target)
            out.append(Due(proposal, step, run, started_at, check, query, previous))
    return out


def next_due_ms(state: LedgerState, evidence: Evidence, now_ms: int) -> int | None:
    """When the next measurement falls due (None: nothing is running), to sleep until then."""
    times = []
    for _proposal, _step, run, started_at, checks in running(state):
        for check in checks:
            previous = evidence.samples.get((run, check.name), ())
            if _finished(check, previous):
                continue
            last = previous[-1].taken_at if previous else started_at
            times.append(last + check.interval_seconds * 1000)
    return min(times) if times else None


def _finished(check: HealthCheck, previous: tuple[Sample, ...]) -> bool:
    """Decided (PASS or FAIL: nothing more to measure in this run), or at the most samples a
    report may carry (MAX_SAMPLES; the check's no-data deadline acts long before, as a rule)."""
    if len(previous) >= MAX_SAMPLES:
        return True
    return bool(previous) and judge(check, previous).verdict != "INCONCLUSIVE"


def report(d: Due, sample: Sample, now_ms: int) -> tuple[HealthReported, bytes]:
    """The report one more sample makes, and its deterministic event id."""
    samples = (*d.previous, sample)
    verdict = judge(d.check, samples).verdict
    evidence = CheckEvidence(d.check.name, d.query, now_ms, samples, verdict)
    payload = HealthReported(d.proposal, d.step, verdict == "PASS", (), (evidence,))
    return payload, report_event_id(d.proposal, d.run, d.check.name, len(samples))
