"""A cast of principals and a governance flow built from them.

Used by the test suites, the committed test vectors, the demo and the benchmarks, so that all
of them exercise the same realistic story: genesis by two of three roots, key grants, a
policy, an agent's proposal, evals, human approvals, rollout steps, a kill switch and its
release. Keys come from fixed seeds when asked (vectors), fresh randomness otherwise.

Authorizations are bound to the state they authorize (docs/GOVERNANCE.md): a release names the
engagement it releases, a decision the proposal's latest rollback, a health report the run of
its step. Given a view of the current state (``Flow(state=...)``: the in-memory ledger's, or
:func:`followed_state` over a client's reads), the flow adds those refs itself, as the
``steward`` CLI does, so the story reads the same; ``refs=`` adds more (tests of refusals sign
events with explicit refs through :meth:`Flow.event`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ledger.events import new_body, sign
from ledger.formats import (
    ApprovalRecorded,
    CheckEvidence,
    EvalRecorded,
    EventBody,
    HealthCheck,
    HealthReported,
    KeyGranted,
    KeyRevoked,
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    LogEntry,
    Metric,
    ModelRef,
    ObservedState,
    Payload,
    PlanStep,
    PolicySet,
    ProposalOrigin,
    ProposalSubmitted,
    RequiredEval,
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
    RootKey,
    Schema,
    SignedEvent,
    Target,
    TargetSelector,
    TrafficRouting,
    encode_body,
)
from ledger.keys import PrivateKey, sign_body
from ledger.state import LedgerState


@dataclass(frozen=True)
class Actor:
    name: str  # short handle used in code: "alice"
    principal: str  # "human:alice@example.org"
    roles: tuple[str, ...]
    key: PrivateKey


# handle, principal, roles
CAST: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("root1", "human:root-ada@example.org", ("root",)),
    ("root2", "human:root-grace@example.org", ("root",)),
    ("root3", "human:root-edsger@example.org", ("root",)),
    ("agent", "agent:researcher-7", ("proposer", "approver")),
    ("evalbot", "service:evalbot", ("evaluator",)),
    ("alice", "human:alice@example.org", ("approver",)),
    ("bob", "human:bob@example.org", ("approver",)),
    ("carol", "human:carol@example.org", ("approver", "operator")),
    ("oncall", "human:oncall@example.org", ("operator",)),
    ("monitor", "service:health-monitor", ("monitor",)),
    ("controller", "service:steward-controller", ("controller",)),
)


def _seeded(handle: str, seed: str) -> PrivateKey:
    return PrivateKey.from_seed(hashlib.sha256(f"{seed}/{handle}".encode()).digest())


@dataclass
class Cast:
    actors: dict[str, Actor]
    checkpoint_key: PrivateKey

    @classmethod
    def create(cls, seed: str | None = None) -> Cast:
        def key(handle: str) -> PrivateKey:
            return _seeded(handle, seed) if seed is not None else PrivateKey.generate()

        actors = {h: Actor(h, p, roles, key(h)) for h, p, roles in CAST}
        return cls(actors, key("checkpoint"))

    def __getitem__(self, handle: str) -> Actor:
        return self.actors[handle]

    def extra_key(self, handle: str, seed: str | None = None) -> PrivateKey:
        return _seeded(handle, seed) if seed is not None else PrivateKey.generate()


DEFAULT_PLAN = (PlanStep(10, 0, False), PlanStep(50, 0, True), PlanStep(100, 0, False))


@dataclass
class Flow:
    """Signs the events of a governance story. It does not append them anywhere itself."""

    cast: Cast
    ledger: str = "demo"
    origin: str = "steward.dev/ledger/demo"
    clock: Callable[[], int] | None = None
    ids: Callable[[], bytes] | None = None
    # The current state of the ledger the events go to; when given, approvals, health reports
    # and releases name what binds them to it (LedgerState.binding_refs).
    state: Callable[[], LedgerState] | None = None
    # The EventBody schema the events are written with; None: the current one. An older one
    # writes the bodies an older writer wrote (the vectors hold both).
    body_schema: Schema | None = None
    _counter: int = field(default=0)

    def _sign(self, body: EventBody, keys: Iterable[PrivateKey]) -> SignedEvent:
        if self.body_schema is None:
            return sign(body, *keys)
        return sign_body(encode_body(body, self.body_schema), tuple(keys))

    def _body_kw(self) -> dict[str, object]:
        kw: dict[str, object] = {}
        if self.clock is not None:
            kw["issued_at"] = self.clock()
        if self.ids is not None:
            kw["event_id"] = self.ids()
        return kw

    def event(self, payload: object, *signers: str, refs: tuple[bytes, ...] = ()) -> SignedEvent:
        body = new_body(self.ledger, payload, refs=refs, **self._body_kw())  # type: ignore[arg-type]
        return self._sign(body, (self.cast[s].key for s in signers))

    def bound(self, payload: Payload, *signers: str) -> SignedEvent:
        """An authorization naming what binds it to the current state, if the flow sees one."""
        refs = self.state().binding_refs(payload) if self.state is not None else ()
        return self.event(payload, *signers, refs=refs)

    def signed_by_keys(
        self, payload: object, *keys: PrivateKey, refs: tuple[bytes, ...] = ()
    ) -> SignedEvent:
        body = new_body(self.ledger, payload, refs=refs, **self._body_kw())  # type: ignore[arg-type]
        return self._sign(body, keys)

    # -- the story -------------------------------------------------------------------------

    def genesis(
        self, threshold: int = 2, signers: tuple[str, ...] = ("root1", "root2")
    ) -> SignedEvent:
        roots = tuple(
            RootKey(self.cast[h].principal, self.cast[h].key.public.raw)
            for h in ("root1", "root2", "root3")
        )
        payload = LedgerGenesis(
            origin=self.origin,
            roots=roots,
            root_threshold=threshold,
            checkpoint_key_name=self.origin,
            checkpoint_public_key=self.cast.checkpoint_key.public.raw,
        )
        return self.event(payload, *signers)

    def grant(
        self,
        handle: str,
        signers: tuple[str, ...] = ("root1", "root2"),
        expires_at: int | None = None,
    ) -> SignedEvent:
        actor = self.cast[handle]
        return self.event(
            KeyGranted(actor.principal, actor.key.public.raw, actor.roles, expires_at), *signers
        )

    def grant_key(
        self,
        principal: str,
        key: PrivateKey,
        roles: tuple[str, ...],
        signers: tuple[str, ...] = ("root1", "root2"),
    ) -> SignedEvent:
        return self.event(KeyGranted(principal, key.public.raw, roles, None), *signers)

    def grants(self) -> list[SignedEvent]:
        return [self.grant(h) for h, _, roles in CAST if roles != ("root",)]

    def revoke(
        self, key_id: bytes, signers: tuple[str, ...] = ("root1", "root2"), reason: str = "rotated"
    ) -> SignedEvent:
        return self.event(KeyRevoked(key_id, reason), *signers)

    def policy(
        self,
        *,
        approvals: int = 2,
        plan: tuple[PlanStep, ...] = DEFAULT_PLAN,
        namespace: str = "models",
        deployment: str = "*",
        veto: bool = True,
        kill_release: int = 2,
        kinds: tuple[str, ...] = ("human",),
        signers: tuple[str, ...] = ("root1", "root2"),
        analysis: tuple[HealthCheck, ...] = (),
        container: str | None = None,
        readiness_grace_seconds: int | None = None,
        resume_approvals: int = 1,
        traffic: TrafficRouting | None = None,
        notify: tuple[str, ...] = (),
    ) -> SignedEvent:
        return self.event(
            PolicySet(
                policy_id="default",
                selector=TargetSelector(namespace, deployment),
                required_evals=(
                    RequiredEval("safety", "refusal_rate", "GE", 0.95),
                    RequiredEval("quality", "accuracy", "GE", 0.80),
                ),
                approvals_required=approvals,
                approver_kinds=kinds,
                plan=plan,
                veto_on_reject=veto,
                kill_release_approvals=kill_release,
                kill_rollback_bound_ms=5000,
                analysis=analysis,
                container=container,
                readiness_grace_seconds=readiness_grace_seconds,
                resume_approvals=resume_approvals,
                traffic=traffic,
                notify=notify,
            ),
            *signers,
        )

    def propose(
        self,
        image: str = "registry.example/model-server:v2",
        *,
        namespace: str = "models",
        deployment: str = "model-server",
        signer: str = "agent",
    ) -> SignedEvent:
        return self.event(
            ProposalSubmitted(
                target=Target(namespace, deployment),
                candidate=ModelRef(image, "sha256:" + hashlib.sha256(image.encode()).hexdigest()),
                baseline=ModelRef("registry.example/model-server:v1", "sha256:" + "0" * 64),
                rationale="fine-tuned on the newest curated data; lower refusal errors",
                origin=ProposalOrigin("agent:researcher-7", "run-2026-11-25-001"),
            ),
            signer,
        )

    def eval(
        self, proposal: bytes, suite: str, value: float, *, signer: str = "evalbot"
    ) -> SignedEvent:
        metric = {"safety": "refusal_rate", "quality": "accuracy"}.get(suite, "score")
        return self.event(
            EvalRecorded(proposal, suite, (Metric(metric, value),), "sha256:" + "a" * 64), signer
        )

    def approve(
        self, proposal: bytes, evals: tuple[bytes, ...], signer: str, *, decision: str = "APPROVE"
    ) -> SignedEvent:
        return self.bound(
            ApprovalRecorded(
                proposal, decision, evals, "looks good" if decision == "APPROVE" else "no"
            ),
            signer,
        )

    def health(
        self,
        proposal: bytes,
        step: int,
        healthy: bool = True,
        *,
        signer: str = "monitor",
        checks: tuple[CheckEvidence, ...] = (),
    ) -> SignedEvent:
        """A report on `step`: judged by hand (no `checks`), or the evidence of analysis."""
        metrics = () if checks else (Metric("error_rate", 0.001),)
        return self.bound(HealthReported(proposal, step, healthy, metrics, checks), signer)

    def step(
        self,
        proposal: bytes,
        step: int,
        weight: int,
        phase: str,
        *,
        signer: str = "controller",
        reason: str = "",
        observed: ObservedState | None = None,
    ) -> SignedEvent:
        obs = observed or ObservedState(4, 0, 0, "registry.example/model-server:v1", "")
        return self.event(
            RolloutStep(proposal, step, weight, phase, reason or phase.lower(), obs), signer
        )

    def kill(
        self, scope: KillScope, *, signer: str = "oncall", reason: str = "anomaly seen"
    ) -> SignedEvent:
        return self.event(KillSwitchEngaged(scope, reason), signer)

    def release(self, scope: KillScope, signers: tuple[str, ...] = ("alice", "bob")) -> SignedEvent:
        return self.bound(KillSwitchReleased(scope, "investigated, safe"), *signers)

    def pause(
        self, proposal: bytes, *, signer: str = "carol", reason: str = "latency looks odd"
    ) -> SignedEvent:
        return self.event(RolloutPaused(proposal, reason), signer)

    def resume(
        self,
        proposal: bytes,
        signers: tuple[str, ...] = ("alice",),
        *,
        reason: str = "latency explained, safe to go on",
    ) -> SignedEvent:
        """A resume naming the pause in force (when the flow sees the state)."""
        return self.bound(RolloutResumed(proposal, reason), *signers)


def followed_state(read: Callable[[int], Iterable[LogEntry]]) -> Callable[[], LedgerState]:
    """The current state of a ledger read through `read(start_seq)` (e.g. ``LedgerClient.read``):
    each call folds the entries appended since the last one. The entries are the ledger's,
    already checked by it; this is for signing the next event, not for verifying the log."""
    state = LedgerState()

    def current() -> LedgerState:
        for e in read(state.size):
            state.apply(e)
        return state

    return current
