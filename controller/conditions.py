"""Standard Kubernetes ``status.conditions`` of a ModelRollout, from the rollout's state.

Pure: no I/O, the time passed in. Five condition types, each always present so ``kubectl wait
--for=condition=Completed modelrollout/X`` and dashboards can rely on them:

- ``Progressing``: True while the canary moves (STARTED, ADVANCED, or resumed after a pause;
  reasons ``RolloutStarted``, ``StepAdvanced``, ``RolloutResumed``); False with ``AwaitingDecision``, ``KillSwitchEngaged`` (pending under a kill
  switch), ``RolloutPaused``, ``RolloutCompleted``, ``RolledBack`` or ``KillSwitch``.
- ``Paused``: True from a governed pause (RolloutPaused on the log) or a PAUSED record until the
  resume (``RolloutPaused``), else ``NotPaused``.
- ``Healthy``: True (``NoFailure``) unless the run was rolled back automatically (False,
  ``RolledBack``, the rollback's reason as message); Unknown before the canary ran
  (``NotStarted``) and after a kill switch stopped it before any verdict (``KillSwitch``).
- ``Completed``: True when PROMOTED (``Promoted``), else ``NotPromoted``.
- ``Aborted``: True when the run was rolled back: ``KillSwitch`` (a kill switch or an
  emergency-stop annotation) or ``RolledBack`` (an automatic rollback); else ``NotAborted``.

``lastTransitionTime`` moves only when a condition's status flips (the Kubernetes API
conventions): it is carried over from the object's previous conditions otherwise, so rewriting
the status with a new message does not fake a transition. ``observedGeneration`` is the
ModelRollout's ``metadata.generation`` the status was computed for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.view import RolloutView

CONDITION_TYPES = ("Progressing", "Paused", "Healthy", "Completed", "Aborted")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False" or "Unknown"
    reason: str  # CamelCase, machine-readable
    message: str  # for people

    def as_dict(self, last_transition: str, generation: int) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message[:1000],
            "lastTransitionTime": last_transition,
            "observedGeneration": generation,
        }


def _killed(v: RolloutView) -> bool:
    return v.display_phase == "Killed"


def _phase(v: RolloutView) -> str:
    """The phase the conditions describe: the log's governed pause and resume, not only the
    controller's last record. A pause holds from its RolloutPaused (the PAUSED record follows
    on the next tick), and a resumed rollout progresses again at once, though its last record
    stays PAUSED until the step's hold has run again (seconds to hours)."""
    if v.phase in ("STARTED", "ADVANCED") and v.display_phase == "Paused":
        return "PAUSED"
    if v.phase == "PAUSED" and v.display_phase == "Progressing":
        return "RESUMED"
    return v.phase


def desired_conditions(v: RolloutView) -> tuple[Condition, ...]:
    """The five conditions of a rollout, in CONDITION_TYPES order, without times."""
    where = f"step {v.step}, weight {v.weight}%"
    why = v.last_reason or v.message
    phase = _phase(v)
    if phase in ("STARTED", "ADVANCED", "RESUMED"):
        progressing = Condition(
            "Progressing",
            "True",
            {"STARTED": "RolloutStarted", "ADVANCED": "StepAdvanced"}.get(phase, "RolloutResumed"),
            where,
        )
    elif phase == "PENDING":
        blocked = bool(v.kill_switch)
        progressing = Condition(
            "Progressing",
            "False",
            "KillSwitchEngaged" if blocked else "AwaitingDecision",
            (f"kill switch {v.kill_switch}" if blocked else v.message)
            or f"waiting for {v.approvals_required} valid approvals",
        )
    elif phase == "PAUSED":
        progressing = Condition("Progressing", "False", "RolloutPaused", f"paused at {where}")
    elif phase == "PROMOTED":
        progressing = Condition("Progressing", "False", "RolloutCompleted", "candidate promoted")
    else:  # ROLLED_BACK
        progressing = Condition(
            "Progressing", "False", "KillSwitch" if _killed(v) else "RolledBack", why
        )

    paused = (
        Condition("Paused", "True", "RolloutPaused", why or f"paused at {where}")
        if phase == "PAUSED"
        else Condition("Paused", "False", "NotPaused", "")
    )

    if phase == "PENDING":
        healthy = Condition("Healthy", "Unknown", "NotStarted", "the canary has not run yet")
    elif phase == "ROLLED_BACK" and _killed(v):
        healthy = Condition("Healthy", "Unknown", "KillSwitch", "stopped before a verdict")
    elif phase == "ROLLED_BACK":
        healthy = Condition("Healthy", "False", "RolledBack", why)
    else:
        healthy = Condition("Healthy", "True", "NoFailure", "no failure in this run")

    completed = (
        Condition("Completed", "True", "Promoted", why or "candidate promoted")
        if phase == "PROMOTED"
        else Condition("Completed", "False", "NotPromoted", "")
    )
    aborted = (
        Condition("Aborted", "True", "KillSwitch" if _killed(v) else "RolledBack", why)
        if phase == "ROLLED_BACK"
        else Condition("Aborted", "False", "NotAborted", "")
    )
    return (progressing, paused, healthy, completed, aborted)


def rollout_conditions(
    v: RolloutView,
    previous: Iterable[Mapping[str, Any]],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """``status.conditions``: `previous` are the object's current ones (keep their times when
    the status did not flip); `now` is an RFC 3339 time for those that did."""
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    out = []
    for c in desired_conditions(v):
        old = before.get(c.type)
        same = old is not None and old.get("status") == c.status and old.get("lastTransitionTime")
        out.append(c.as_dict(str(old["lastTransitionTime"]) if same and old else now, generation))
    return out
