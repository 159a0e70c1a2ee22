"""Staging: what the writer does to submitted events before its append lock.

Decoding and Ed25519 checks are pure work on the submitted bytes, so they run in the caller's
thread (or a signature worker process), in parallel with other callers' folds and store
writes; only the rules, on the state an entry really follows, wait for the lock
(:class:`ledger.writer.LedgerServer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ledger.core import body_digest
from ledger.errors import StewardError
from ledger.formats import EventBody, ReceivedEvent, decode_body, decode_received_event
from ledger.quick_init import quick_init
from ledger.rules import RuleViolationError, VerifiedSignature, signature_order_violation
from ledger.sigcheck import PendingChecks, SignatureChecker
from ledger.state import KeyInfo


@quick_init
@dataclass(frozen=True)
class StagedEvent:
    """One submitted event, decoded outside the append lock (or why it does not decode)."""

    size: int  # bytes as submitted
    received: ReceivedEvent | None = None
    body: EventBody | None = None
    digest: bytes = b""  # body_digest(event.body), for idempotency
    error: StewardError | None = None


@quick_init
@dataclass(frozen=True)
class StagedBatch:
    """Events decoded and their signatures checked with Ed25519 before the append lock.

    `verified` only says which signatures are cryptographically valid; whether their keys may
    sign (known, not revoked, not expired, by an earlier event of the same batch too) is decided
    under the lock by ``rules.check``, on the state the entry really follows.
    """

    events: tuple[StagedEvent, ...]
    verified: frozenset[VerifiedSignature]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.events)


@quick_init
@dataclass(frozen=True)
class DecodedBatch:
    """A batch decoded, its signatures not checked yet (LedgerServer.decode)."""

    events: tuple[StagedEvent, ...]
    pending: PendingChecks


def decode(signed_events: Sequence[bytes], keys: Mapping[bytes, KeyInfo]) -> DecodedBatch:
    """Decode each event, and collect its signatures to check against `keys` (a hint: the keys
    known now, read without the lock; see StagedBatch)."""
    pending = PendingChecks(keys)
    staged: list[StagedEvent] = []
    for raw in signed_events:
        try:
            received = decode_received_event(raw)
            # One event, one encoding: a reordered or repeated signature list is refused here,
            # before the retry lookup, so it can never stand for (or shadow) the author's event.
            order = signature_order_violation(received.event.signatures)
            if order is not None:
                raise RuleViolationError(order)
            body = decode_body(received.event.body)
        except StewardError as exc:
            staged.append(StagedEvent(len(raw), error=exc))
            continue
        staged.append(StagedEvent(len(raw), received, body, body_digest(received.event.body)))
        pending.add(received.event.body, received.event.signatures)
    return DecodedBatch(tuple(staged), pending)


def check_signatures(decoded: DecodedBatch, checker: SignatureChecker) -> StagedBatch:
    """All of the batch's signatures at once (in a worker process for a large batch, the
    interpreter lock released while it waits)."""
    return StagedBatch(decoded.events, checker.verified(decoded.pending))
