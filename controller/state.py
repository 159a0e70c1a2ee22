"""What the controller folds from the log: the rules' state plus what rollouts need beyond it.

Pure: no I/O. ``ControllerState.fold(entry)`` checks an entry with the shared rules against the
state folded so far and applies it only when it passes; an entry that fails (forged, unsigned,
written straight into storage) is counted and otherwise ignored, never acted on.

Beyond :class:`ledger.state.LedgerState` the controller needs, per proposal, the replica count
``N`` and the stable image the rollout started from. Both come from the ``observed`` state of the
proposal's latest STARTED record, so the log (not the cluster) says what "restore stable" means.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from ledger.formats import LogEntry, ProposalSubmitted, RolloutStep, payload_hashes
from ledger.rules import VerifiedSignature, Violation, check
from ledger.state import LedgerState


@dataclass(frozen=True)
class RolloutRecord:
    """What the log says about a proposal's rollout beyond the rules' StepInfo."""

    total_replicas: int  # N: stable + canary as observed when the rollout STARTED
    stable_image: str  # the stable image at STARTED, restored on rollback
    last_phase: str = ""
    last_reason: str = ""
    drift_count: int = 0  # DRIFT_CORRECTED records so far (part of their event ids)


@dataclass(frozen=True)
class RejectedEntry:
    position: int
    seq: int | None
    code: str
    message: str


@dataclass
class ControllerState:
    ledger: LedgerState = field(default_factory=LedgerState)
    rollouts: dict[bytes, RolloutRecord] = field(default_factory=dict)
    last_seq: dict[bytes, int] = field(default_factory=dict)  # proposal -> last seq naming it
    applied: int = 0
    invalid: int = 0

    def fold(self, e: LogEntry, verified: Container[VerifiedSignature] = ()) -> Violation | None:
        """Check `e` against the state and apply it when valid; return the violation if not.

        `verified`: (public key, signature, body) triples already checked with Ed25519 (the
        rules still decide whether each key may sign, on this state)."""
        violation = check(self.ledger, e, verified)
        if violation is not None:
            self.invalid += 1
            return violation
        self.ledger.apply(e)
        self.applied += 1
        payload = e.body.payload
        if isinstance(payload, ProposalSubmitted):
            self.last_seq[e.leaf_hash] = e.seq
        for h in payload_hashes(payload):
            if h in self.ledger.proposals:
                self.last_seq[h] = e.seq
        if isinstance(payload, RolloutStep):
            self._fold_step(payload)
        return None

    def count_undecodable(self) -> None:
        """A record that is not even an entry: counted with the invalid ones."""
        self.invalid += 1

    def _fold_step(self, step: RolloutStep) -> None:
        old = self.rollouts.get(step.proposal)
        if step.phase == "STARTED":
            obs = step.observed
            self.rollouts[step.proposal] = RolloutRecord(
                total_replicas=obs.stable_replicas + obs.canary_replicas,
                stable_image=obs.stable_image,
                last_phase=step.phase,
                last_reason=step.reason,
                drift_count=old.drift_count if old else 0,
            )
            return
        if old is None:  # the rules refuse every other phase before STARTED
            return
        drift = step.phase == "DRIFT_CORRECTED"
        self.rollouts[step.proposal] = RolloutRecord(
            total_replicas=old.total_replicas,
            stable_image=old.stable_image,
            # A drift correction keeps the rollout where it was, so it keeps its story too.
            last_phase=old.last_phase if drift else step.phase,
            last_reason=old.last_reason if drift else step.reason,
            drift_count=old.drift_count + drift,
        )
