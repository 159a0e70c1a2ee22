"""Step 10, rollout conformance: did the controller do only what the evidence allowed?

* no canary weight (STARTED/ADVANCED/PROMOTED) before enough valid approvals by distinct
  principals, over a veto, or under a kill switch;
* weights never beyond the plan's current step, steps in plan order, hold times and health
  gates respected;
* promotion only after every step of the plan, and no step forward while a pause holds the
  rollout (a RolloutPaused not yet resumed);
* every kill switch followed, within the policy's ``kill_rollback_bound_ms`` (measured by
  received_at), by a ROLLED_BACK for each rollout that was active in its scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.analysis import gating
from audit.findings import Finding
from audit.formats import Entry, KillScope, RolloutStep
from audit.rules import _proposal, _single_author
from audit.state import ACTIVE, ProposalRecord, Signers, State


@dataclass(frozen=True)
class Obligation:
    proposal: bytes
    kill_seq: int
    deadline: int  # received_at by which the rollback must be in the log


class Conformance:
    def __init__(self) -> None:
        self.pending: dict[bytes, Obligation] = {}
        self.last_at = 0

    # -- kill switch obligations -------------------------------------------------------------

    def kill_engaged(self, state: State, seq: int, at: int, scope: KillScope) -> None:
        for p in state.active_proposals():
            if p.phase not in ACTIVE or p.hash in self.pending:
                continue
            if _covers(scope, p):
                bound = state.policy(p).kill_rollback_bound_ms
                self.pending[p.hash] = Obligation(p.hash, seq, at + bound)

    def tick(self, at: int, out: list[Finding]) -> None:
        """Report obligations whose deadline passed before an entry received at `at`."""
        if at > self.last_at:
            self.last_at = at
        if not self.pending:
            return
        for h, ob in list(self.pending.items()):
            if at > ob.deadline:
                out.append(
                    Finding(
                        "KILL_NOT_ROLLED_BACK",
                        ob.kill_seq,
                        f"the kill switch at seq {ob.kill_seq} was not followed by a rollback of proposal {h.hex()[:16]} in time",
                        f"no ROLLED_BACK by {ob.deadline} ms (log went on to {at} ms)",
                        f"ROLLED_BACK by {ob.deadline} ms",
                    )
                )
                del self.pending[h]

    # -- rollout steps -----------------------------------------------------------------------

    def check_step(
        self,
        state: State,
        seq: int,
        entry: Entry,
        p: RolloutStep,
        signers: Signers,
        out: list[Finding],
    ) -> None:
        if _single_author(signers, ("controller",), "RolloutStep", seq, out) is None:
            return
        prop = _proposal(state, p.proposal, seq, out)
        if prop is None:
            return
        plan = state.policy(prop).plan
        phase, cur = prop.phase, prop.current()
        n = len(out)

        def expect(step: int, weight: int) -> None:
            if p.step != step:
                out.append(
                    Finding(
                        "STEP_OUT_OF_ORDER",
                        seq,
                        f"{p.phase} at the wrong step",
                        str(p.step),
                        str(step),
                    )
                )
            elif p.weight > weight:
                out.append(
                    Finding(
                        "WEIGHT_BEYOND_PLAN",
                        seq,
                        f"{p.phase} with a weight above the plan's step {step}",
                        f"{p.weight}%",
                        f"{weight}%",
                    )
                )
            elif p.weight != weight:
                out.append(
                    Finding(
                        "WEIGHT_OFF_PLAN",
                        seq,
                        f"{p.phase} with a weight off the plan's step {step}",
                        f"{p.weight}%",
                        f"{weight}%",
                    )
                )

        def state_error(allowed: str) -> None:
            out.append(
                Finding("ROLLOUT_STATE", seq, f"{p.phase} cannot follow {phase}", phase, allowed)
            )

        if p.phase == "STARTED":
            if phase not in ("PENDING", "ROLLED_BACK"):
                return state_error("PENDING or ROLLED_BACK")
            t = prop.proposal.target
            busy = state.active_on(t.namespace, t.deployment)
            if busy is not None:
                out.append(
                    Finding(
                        "TARGET_BUSY",
                        seq,
                        "another rollout is active on the target",
                        busy.hash.hex()[:16],
                    )
                )
            expect(0, plan[0].weight)
            self._may_go(state, prop, seq, p.phase, out)
        elif p.phase in ("ADVANCED", "PROMOTED"):
            if phase not in ACTIVE or cur is None:
                return state_error("an active rollout")
            if p.phase == "ADVANCED":
                if cur.step + 1 >= len(plan):
                    out.append(
                        Finding(
                            "STEP_OUT_OF_ORDER",
                            seq,
                            "ADVANCED past the plan's last step",
                            str(p.step),
                            f"PROMOTED at step {cur.step}",
                        )
                    )
                else:
                    expect(cur.step + 1, plan[cur.step + 1].weight)
            elif cur.step != len(plan) - 1 or p.step != len(plan) - 1:
                out.append(
                    Finding(
                        "PROMOTED_EARLY",
                        seq,
                        "promoted before every step of the plan ran",
                        f"at step {cur.step} of {len(plan)}",
                        f"step {len(plan) - 1} (the last)",
                    )
                )
            else:
                expect(cur.step, 100)
            if len(out) == n and prop.paused is not None:
                out.append(
                    Finding(
                        "ROLLOUT_WHILE_PAUSED",
                        seq,
                        f"{p.phase} while a pause holds the rollout",
                        f"paused at seq {prop.paused[0]} by {prop.paused[2]}, not resumed",
                        "a RolloutResumed first",
                    )
                )
            if len(out) == n:
                self._may_go(state, prop, seq, p.phase, out)
            if len(out) == n:
                self._hold_and_health(state, prop, seq, entry.received_at, out)
        elif p.phase in ("PAUSED", "ROLLED_BACK"):
            if phase not in ACTIVE or cur is None:
                return state_error("an active rollout")
            expect(cur.step, 0 if p.phase == "ROLLED_BACK" else cur.weight)
        elif p.phase == "DRIFT_CORRECTED":
            if (phase not in ACTIVE and phase != "PROMOTED") or cur is None:
                return state_error("an active or promoted rollout")
            expect(cur.step, cur.weight)
        return None

    def step_applied(self, p: RolloutStep, at: int) -> None:
        if p.phase == "ROLLED_BACK":
            ob = self.pending.get(p.proposal)
            if ob is not None and at <= ob.deadline:
                del self.pending[p.proposal]

    @staticmethod
    def _may_go(
        state: State, prop: ProposalRecord, seq: int, phase: str, out: list[Finding]
    ) -> None:
        need = state.policy(prop).approvals_required
        principals, keys = state.approvals(prop)
        if len(principals) < need:
            code = "DOUBLE_COUNTED" if len(keys) >= need else "ROLLOUT_WITHOUT_APPROVAL"
            out.append(
                Finding(
                    code,
                    seq,
                    f"{phase} needs {need} valid approvals from distinct principals",
                    f"{len(principals)} principal(s) {sorted(principals)}, {len(keys)} key(s)",
                    f">= {need} principals",
                )
            )
            return
        vetoes = state.vetoes(prop)
        if vetoes:
            out.append(
                Finding(
                    "ROLLOUT_VETOED",
                    seq,
                    f"{phase} over a veto",
                    ", ".join(sorted(vetoes)),
                    "no standing rejection",
                )
            )
            return
        scope = state.covering_kill(prop)
        if scope is not None:
            out.append(
                Finding(
                    "ROLLOUT_UNDER_KILL_SWITCH",
                    seq,
                    f"{phase} while a {scope.kind} kill switch is engaged",
                    f"engaged at seq {state.kills[scope]}",
                    "released first",
                )
            )

    @staticmethod
    def _hold_and_health(
        state: State, prop: ProposalRecord, seq: int, at: int, out: list[Finding]
    ) -> None:
        started = prop.entered()
        if started is None:
            return
        step = state.policy(prop).plan[started.step]
        if at - started.at < step.hold_seconds * 1000:
            out.append(
                Finding(
                    "HOLD_NOT_ELAPSED",
                    seq,
                    f"step {started.step} left too early",
                    f"held {at - started.at} ms",
                    f">= {step.hold_seconds * 1000} ms",
                )
            )
        elif gating(state.policy(prop), started.step):
            # Every check gating the step passed in this run, as the auditor recomputes it.
            results = prop.checks.get(started.step, {})
            pending = []
            for check in gating(state.policy(prop), started.step):
                r = results.get(check.name)
                if r is None or r[0] < started.seq:
                    pending.append(f"{check.name}: no report in this run")
                elif r[1] != "PASS":
                    pending.append(f"{check.name}: {r[1]} ({r[2]})")
            if pending:
                out.append(
                    Finding(
                        "HEALTH_GATE_SKIPPED",
                        seq,
                        f"gated step {started.step} left without every check passing",
                        "; ".join(pending),
                        "every check PASS, recomputed from its samples",
                    )
                )
        elif step.health_gate:
            report = prop.health.get(started.step)
            if report is None or report[0] < started.seq or not report[1]:
                observed = (
                    "unhealthy"
                    if report and report[0] >= started.seq
                    else "no report since the step started"
                )
                out.append(
                    Finding(
                        "HEALTH_GATE_SKIPPED",
                        seq,
                        f"gated step {started.step} left without a healthy report",
                        observed,
                        "a healthy report",
                    )
                )

    def finish(self, out: list[Finding]) -> list[Obligation]:
        """Obligations still open at the end of the log (not yet due: not findings)."""
        return list(self.pending.values())


def _covers(scope: KillScope, p: ProposalRecord) -> bool:
    t = p.proposal.target
    if scope.kind == "GLOBAL":
        return True
    if scope.kind == "TARGET":
        return (scope.namespace, scope.deployment) == (t.namespace, t.deployment)
    return scope.proposal == p.hash
