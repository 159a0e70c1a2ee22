"""What the auditor reports: findings, each with a code of its own and the step that found it,
the numbered steps, and the :class:`Report` that collects them with a timeline of the log.

The verifier (audit.verify) fills a Report; the renderers (audit.report) and the drift check
(audit.drift) read it, without importing the verifier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from audit.names import printable

# code -> (verification step, what it means). docs/AUDIT.md carries the same table.
CODES: dict[str, tuple[int, str]] = {
    # 0 trust input
    "TRUST_ROOT_MISMATCH": (
        0,
        "genesis does not list exactly the pinned root keys, or is not signed by enough of them",
    ),
    "VKEY_MISMATCH": (0, "the genesis checkpoint key differs from the pinned vkey"),
    "ORIGIN_MISMATCH": (0, "the genesis origin differs from the pinned origin"),
    "EMPTY_LOG": (0, "the log holds no entry"),
    # 1 decoding and fingerprints
    "DECODE_ERROR": (1, "bytes that are not a valid Entry/EventBody encoding"),
    "UNKNOWN_FINGERPRINT": (
        1,
        "a single-object encoding whose schema fingerprint the auditor does not know",
    ),
    # 2 author signatures
    "NO_SIGNATURES": (2, "an entry without any signature"),
    "BAD_SIGNATURE": (2, "a signature that does not verify over the entry's signed bytes"),
    "SIGNATURE_SWAPPED": (
        2,
        "a signature that does not verify here but was taken from another entry of the log",
    ),
    "SIGNATURES_NOT_CANONICAL": (
        2,
        "signatures not sorted by key id, or a key listed twice (a second encoding of one event)",
    ),
    # 3 key validity at each seq
    "UNKNOWN_KEY": (3, "a signature by a key not granted before this seq"),
    "KEY_REVOKED": (3, "a signature by a key revoked at an earlier seq"),
    "KEY_EXPIRED": (3, "a signature by a key whose expiry is not after the entry's received_at"),
    "ROLE_MISSING": (3, "the author holds no key with the role the event type needs"),
    # 4 thresholds by distinct principal
    "THRESHOLD_NOT_MET": (4, "fewer distinct principals signed than the threshold needs"),
    "DOUBLE_COUNTED": (4, "a threshold is met only by counting several keys of one principal"),
    "MULTIPLE_AUTHORS": (4, "a single-author event signed by several principals"),
    # 5 hash chain
    "PREV_MISMATCH": (5, "prev is not the leaf hash of the previous entry"),
    "ENTRY_MISSING": (5, "a seq is missing from the log (deleted entry)"),
    "ENTRY_REORDERED": (5, "entries arrive out of seq order"),
    "ENTRY_INSERTED": (5, "a record claims a seq whose chain entry is another, different record"),
    "ENTRY_DUPLICATED": (5, "an identical record appears twice"),
    "LOG_TRUNCATED": (
        5,
        "the log ends before the size a checkpoint (or the saved checkpoint) commits to",
    ),
    "UNCOVERED_TAIL": (
        5,
        "an export whose last entries no signed checkpoint covers (nothing the ledger signed vouches for them)",
    ),
    # 6 Merkle roots
    "CHECKPOINT_ROOT_MISMATCH": (
        6,
        "a checkpoint's root differs from the Merkle root of the log at its size",
    ),
    # 7 checkpoint notes
    "CHECKPOINT_MALFORMED": (7, "a checkpoint that is not a C2SP checkpoint note"),
    "CHECKPOINT_BAD_SIGNATURE": (7, "a checkpoint not signed by the ledger's checkpoint key"),
    "CHECKPOINT_ORIGIN_MISMATCH": (7, "a checkpoint for another origin"),
    "CHECKPOINT_UNWITNESSED": (
        7,
        "the newest checkpoint of a file carries fewer witness cosignatures than the trust "
        "root's witness threshold",
    ),
    "COSIGNATURE_BAD_SIGNATURE": (
        7,
        "a cosignature that claims a trusted witness's key but does not verify",
    ),
    # 8 consistency
    "CHECKPOINT_FORK": (
        8,
        "checkpoints (or the saved checkpoint) that no single append-only log can explain",
    ),
    # 9 governance rules
    "GENESIS_MISPLACED": (9, "LedgerGenesis not at seq 0, or seq 0 not a LedgerGenesis"),
    "GENESIS_INVALID": (9, "a genesis with invalid fields"),
    "LEDGER_MISMATCH": (9, "an entry naming another ledger"),
    "EVENT_REPLAYED": (9, "an event id already used by an earlier entry (replayed event)"),
    "REF_UNKNOWN": (9, "a ref to no earlier valid entry"),
    "REF_MISSING": (9, "the payload names an entry its refs do not list"),
    "FIELD_INVALID": (9, "a field outside its allowed values"),
    "NAME_INVALID": (
        9,
        "a namespace, Deployment name or principal that is not well formed (DNS-1123, kind:name)",
    ),
    "TEXT_INVALID": (
        9,
        "free text holding a control or invisible character, or over its length cap",
    ),
    "KEY_DUPLICATE": (9, "a key granted twice"),
    "KEY_UNKNOWN": (9, "revoking a key that is not live"),
    "POLICY_INVALID": (9, "a policy with invalid fields"),
    "NO_POLICY": (9, "a proposal for a target no policy selects"),
    "PROPOSAL_UNKNOWN": (9, "an event naming something that is not a proposal"),
    "PROPOSAL_CLOSED": (9, "an eval or approval for an already promoted proposal"),
    "SELF_EVALUATION": (9, "the proposer evaluated its own proposal"),
    "SELF_APPROVAL": (9, "the proposer approved or rejected its own proposal"),
    "APPROVER_KIND_NOT_ALLOWED": (9, "an approval by a principal kind the policy does not accept"),
    "EVAL_NOT_FOR_PROPOSAL": (9, "an approval naming an eval of another proposal"),
    "EVALS_MISSING": (9, "an approval before every required suite was evaluated"),
    "APPROVAL_NOT_BOUND": (9, "an approval not bound to the latest eval of every required suite"),
    "EVAL_FAILED_APPROVED": (9, "an approval over a failing eval"),
    "DECISION_NOT_AFTER_LATEST_ROLLBACK": (
        9,
        "a decision whose refs do not name exactly its proposal's latest rollback (signed before it)",
    ),
    "HEALTH_NOT_FOR_CURRENT_RUN": (
        9,
        "a health report whose refs do not name exactly the run of its step now running",
    ),
    "STEP_NOT_IN_PLAN": (9, "a health report for a step outside the plan"),
    "HEALTH_VERDICT_MISMATCH": (
        9,
        "a health report whose check verdict (or healthy) is not what its signed samples make "
        "under the policy",
    ),
    "HEALTH_EVIDENCE_INVALID": (
        9,
        "a health report carrying a check that does not gate its step, or not the policy's query",
    ),
    "KILL_SWITCH_ALREADY_ENGAGED": (9, "engaging a kill switch that is engaged"),
    "KILL_SWITCH_NOT_ENGAGED": (9, "releasing a kill switch that is not engaged"),
    "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT": (
        9,
        "a release whose refs do not name exactly the engagement it releases",
    ),
    "ROLLOUT_NOT_RUNNING": (
        9,
        "a pause of a rollout that has not started, or has ended (promoted or rolled back)",
    ),
    "ROLLOUT_ALREADY_PAUSED": (9, "a pause of a rollout already paused"),
    "ROLLOUT_NOT_PAUSED": (9, "a resume of a rollout that is not paused"),
    "RESUME_NOT_FOR_CURRENT_PAUSE": (
        9,
        "a resume whose refs do not name exactly the pause in force (signed for another one)",
    ),
    # 10 rollout conformance
    "ROLLOUT_WITHOUT_APPROVAL": (10, "canary weight or promotion without enough valid approvals"),
    "ROLLOUT_VETOED": (10, "a rollout moving forward over a veto"),
    "ROLLOUT_UNDER_KILL_SWITCH": (10, "a rollout moving forward while a kill switch covers it"),
    "ROLLOUT_STATE": (10, "a rollout phase that cannot follow the current one"),
    "TARGET_BUSY": (10, "two rollouts active on one target"),
    "STEP_OUT_OF_ORDER": (10, "a rollout step that is not the plan's next (or current) step"),
    "WEIGHT_BEYOND_PLAN": (10, "a canary weight above the plan's weight for the current step"),
    "WEIGHT_OFF_PLAN": (10, "a canary weight below or otherwise off the plan's weight"),
    "PROMOTED_EARLY": (10, "a promotion before every step of the plan ran"),
    "ROLLOUT_WHILE_PAUSED": (10, "a rollout moving forward while a pause holds it"),
    "HOLD_NOT_ELAPSED": (10, "a step left before its hold time"),
    "HEALTH_GATE_SKIPPED": (
        10,
        "a gated step left without a healthy report since it started, or, when checks gate it, "
        "without every check passing (recomputed) in that run",
    ),
    "KILL_NOT_ROLLED_BACK": (
        10,
        "a kill switch not followed by a rollback of every active rollout in scope within the bound",
    ),
    # 11 drift
    "DRIFT": (11, "the live cluster differs from what the log implies"),
}


@dataclass(frozen=True)
class Finding:
    code: str
    seq: int | None
    message: str
    observed: str = ""
    expected: str = ""
    # For a finding about a record the chain does not hold (a second record claiming a seq, a
    # record out of order): its position in the source, 0-based (Kafka: the n-th record read
    # from offset 0; export: the n-th record of the file). None for findings about the chain.
    record: int | None = None

    @property
    def step(self) -> int:
        return CODES[self.code][0]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["step"] = self.step
        return out

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "log"
        if self.record is not None:
            where += f" (record #{self.record} of the source)"
        text = f"[{self.code}] {where}: {self.message}"
        if self.observed or self.expected:
            text += f" (observed: {self.observed or '-'}; expected: {self.expected or '-'})"
        return printable(text)  # messages quote the log: one finding, one line


@dataclass(slots=True)
class TimelineEvent:
    at: int
    seq: int
    kind: str  # proposal, eval, approval, reject, kill, release, step
    proposal: bytes | None
    label: str
    weight: int | None = None
    # STARTED steps: the replicas (stable + canary) observed as the rollout started, the N the
    # controller shares between stable and canary and gives the stable on promotion.
    total_replicas: int | None = None


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    entries: int = 0
    checkpoints: int = 0
    verified_checkpoint: str | None = None  # the newest checkpoint note that verified clean
    verified_size: int = 0
    origin: str = ""
    ledger: str = ""
    steps_run: dict[int, str] = field(default_factory=dict)
    timeline: list[TimelineEvent] = field(default_factory=list)
    proposals: dict[str, str] = field(default_factory=dict)  # hash hex -> label
    seconds: float = 0.0
    # What checked the signatures: "native" (steward_ed25519) or "libsodium".
    verifier: str = ""
    open_obligations: int = 0
    # A live log's entries past the newest signed checkpoint: (first seq, last seq). They passed
    # every check but the ledger has not vouched for them yet; never called verified.
    pending: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return not self.findings


STEP_NAMES = {
    1: "decode entries and bodies, check schema fingerprints",
    2: "verify every author signature",
    3: "check key validity at each seq",
    4: "check thresholds by distinct principal",
    5: "check the hash chain",
    6: "check the Merkle root at every checkpoint",
    7: "verify every checkpoint's signed note and its witness cosignatures",
    8: "check consistency between checkpoints and with the saved checkpoint",
    9: "apply the governance rules",
    10: "check rollout conformance",
    11: "compare the live cluster with the log (drift)",
}
