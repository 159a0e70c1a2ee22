"""Automated canary analysis as the auditor recomputes it: which checks gate a step, the query a
check sends for a target, and the verdict its samples make (docs/ANALYSIS.md "Verdicts").

Written again from the documentation (the auditor imports nothing from the ledger). A sample is
a value or inconclusive (no value, or one that is not finite). Walking a run's samples in order:
``FAIL`` once ``failure_limit`` conclusive samples missed ``op threshold``; ``PASS`` once
``count`` conclusive samples were taken with fewer failures; otherwise ``INCONCLUSIVE``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from audit.formats import HealthCheck, PolicySet, Sample, Target

MAX_SAMPLES = 256
MAX_COUNT = 100


def meets(value: float, op: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return {
        "GE": value >= threshold,
        "GT": value > threshold,
        "LE": value <= threshold,
        "LT": value < threshold,
        "EQ": value == threshold,
    }[op]


def verdict(check: HealthCheck, samples: Sequence[Sample]) -> tuple[str, str]:
    """(PASS | FAIL | INCONCLUSIVE, the deciding value or the count so far)."""
    passed = failed = 0
    for s in samples:
        if s.value is None or not math.isfinite(s.value):
            continue
        if meets(s.value, check.op, check.threshold):
            passed += 1
        else:
            failed += 1
            if failed >= check.failure_limit:
                return "FAIL", f"{check.name}: {s.value:g} is not {check.op} {check.threshold:g}"
        if passed + failed >= check.count:
            return "PASS", f"{check.name}: {passed + failed} measurements, {failed} failed"
    return "INCONCLUSIVE", f"{check.name}: {passed + failed} of {check.count} measurements"


def gating(policy: PolicySet, step: int) -> list[HealthCheck]:
    """The checks that gate `step`: those naming it, or naming none when the step is gated."""
    if not 0 <= step < len(policy.plan):
        return []
    gated = policy.plan[step].health_gate
    return [c for c in policy.analysis if (step in c.steps if c.steps is not None else gated)]


def rendered(check: HealthCheck, target: Target) -> str:
    """The check's query with {namespace} {deployment} {canary_selector} {stable_selector}."""

    def sel(track: str) -> str:
        return f'namespace="{target.namespace}",app="{target.deployment}",track="{track}"'

    out = check.query
    for name, value in (
        ("namespace", target.namespace),
        ("deployment", target.deployment),
        ("canary_selector", sel("canary")),
        ("stable_selector", sel("stable")),
    ):
        out = out.replace("{" + name + "}", value)
    return out


def policy_problems(p: PolicySet) -> list[str]:
    """What makes a policy's analysis unable to decide (empty: fine)."""
    gated = {i for i, s in enumerate(p.plan) if s.health_gate}
    problems, names = [], set()
    for i, c in enumerate(p.analysis):
        ok = (
            c.name
            and c.name not in names
            and c.query
            and c.op in ("GE", "GT", "LE", "LT", "EQ")
            and not math.isnan(c.threshold)
            and c.interval_seconds >= 1
            and 1 <= c.count <= MAX_COUNT
            and 1 <= c.failure_limit <= c.count
            and (
                c.steps is None
                or (c.steps and len(set(c.steps)) == len(c.steps) and set(c.steps) <= gated)
            )
            and c.no_data.action in ("ROLLBACK", "PAUSE")
            and c.no_data.deadline_seconds >= c.count * c.interval_seconds
        )
        names.add(c.name)
        if not ok:
            problems.append(f"analysis[{i}]")
    if p.readiness_grace_seconds is not None and p.readiness_grace_seconds < 0:
        problems.append("readiness_grace_seconds")
    return problems
