"""Automated canary analysis, the pure part: which checks gate a step, the query a check sends
for a target, and the verdict its samples make (docs/ANALYSIS.md).

The verdict is **recomputed, never trusted**: the rules (:mod:`ledger.rules`) refuse a health
report whose signed verdict is not :func:`judge` of its signed samples under the policy, the
controller's planner acts on :func:`judge`, and the auditor has its own copy of these
definitions (``audit.analysis``), as it shares no code with the ledger.

A check's run on a step is its samples in the order taken. Each sample is a value or
inconclusive (no value: Prometheus had no data, or answered with an error; a value that is not
finite counts as inconclusive too). Walking them in order, the first of these decides:

* ``FAIL`` once ``failure_limit`` conclusive samples did not meet ``op threshold``;
* ``PASS`` once ``count`` conclusive samples were taken with fewer failures than that;
* otherwise ``INCONCLUSIVE`` (no verdict yet): the step holds, and the check's no-data rule
  acts if it has no verdict ``no_data.deadline_seconds`` after the step's run began.

Samples after the deciding one do not change the verdict (a report carries only the run so
far, but a monitor that keeps sampling cannot turn a FAIL into a PASS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from ledger.model import CheckEvidence, HealthCheck, PolicySet, Sample, Target

# How many samples one check may carry in one report: a bound on the body (64 KiB) that a
# policy's count cannot reach (MAX_COUNT), leaving room for inconclusive samples.
MAX_SAMPLES = 256
MAX_COUNT = 100

PLACEHOLDERS = ("namespace", "deployment", "canary_selector", "stable_selector")


class Judgement(NamedTuple):
    """A check's verdict and why: the deciding sample's value, or what is still missing."""

    verdict: str  # PASS, FAIL or INCONCLUSIVE
    why: str
    passed: int
    failed: int
    inconclusive: int


def conclusive(sample: Sample) -> bool:
    return sample.value is not None and math.isfinite(sample.value)


def meets(value: float, op: str, threshold: float) -> bool:
    """`value op threshold`, as an eval's metric is compared (NaN never meets)."""
    if math.isnan(value):
        return False
    if op == "GE":
        return value >= threshold
    if op == "GT":
        return value > threshold
    if op == "LE":
        return value <= threshold
    if op == "LT":
        return value < threshold
    if op == "EQ":
        return value == threshold
    raise KeyError(op)  # the rules admit no other op


def judge(check: HealthCheck, samples: Sequence[Sample]) -> Judgement:
    """The verdict the samples of one run make under `check` (see the module docstring)."""
    passed = failed = inconclusive = 0
    for sample in samples:
        if sample.value is None or not math.isfinite(sample.value):
            inconclusive += 1
            continue
        if meets(sample.value, check.op, check.threshold):
            passed += 1
        else:
            failed += 1
            if failed >= check.failure_limit:
                return Judgement(
                    "FAIL",
                    f"{check.name}: {_fmt(sample.value)} is not {check.op} "
                    f"{_fmt(check.threshold)} ({failed} of failure limit {check.failure_limit})",
                    passed,
                    failed,
                    inconclusive,
                )
        if passed + failed >= check.count:
            return Judgement(
                "PASS",
                f"{check.name}: {passed + failed} of {check.count} measurements, "
                f"{failed} failed (limit {check.failure_limit}); last {_fmt(sample.value)}",
                passed,
                failed,
                inconclusive,
            )
    last = samples[-1] if samples else None
    seen = (
        "no sample yet"
        if last is None
        else f"last {_fmt(last.value)}"
        if conclusive(last)
        else f"last inconclusive ({last.detail or 'no data'})"
    )
    return Judgement(
        "INCONCLUSIVE",
        f"{check.name}: {passed + failed} of {check.count} measurements, "
        f"{inconclusive} inconclusive; {seen}",
        passed,
        failed,
        inconclusive,
    )


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:g}"


def checks_for_step(policy: PolicySet, step: int) -> tuple[HealthCheck, ...]:
    """The policy's checks that gate `step`: those naming it, and those naming no step when
    the step is health-gated. Empty: the step's gate (if any) is judged by hand."""
    if not 0 <= step < len(policy.plan):
        return ()
    gated = policy.plan[step].health_gate
    return tuple(c for c in policy.analysis if (step in c.steps if c.steps is not None else gated))


def selector(target: Target, track: str) -> str:
    """The PromQL label matchers of one track's pods (docs/ANALYSIS.md "Selectors"): the
    target's namespace, its app label and the controller's track label, relabelled as
    ``namespace``, ``app`` and ``track``."""
    return f'namespace="{target.namespace}",app="{target.deployment}",track="{track}"'


def render_query(check: HealthCheck, target: Target) -> str:
    """The query as sent for `target`: the template's placeholders filled in. Only the four
    placeholders are replaced (PromQL's own braces stay as written)."""
    values = {
        "namespace": target.namespace,
        "deployment": target.deployment,
        "canary_selector": selector(target, "canary"),
        "stable_selector": selector(target, "stable"),
    }
    out = check.query
    for name in PLACEHOLDERS:
        out = out.replace("{" + name + "}", values[name])
    return out


def evidence_problem(
    check: HealthCheck, target: Target, evidence: CheckEvidence
) -> tuple[str, str] | None:
    """(field suffix, why) when the evidence's query is not the check's for the target, or it
    carries too many samples; None when it is well formed (its verdict is judged apart)."""
    expected = render_query(check, target)
    if evidence.query != expected:
        return "query", f"the query as sent is {evidence.query!r}, the policy's is {expected!r}"
    if len(evidence.samples) > MAX_SAMPLES:
        return "samples", f"{len(evidence.samples)} samples, at most {MAX_SAMPLES}"
    return None
