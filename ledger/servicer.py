"""The ledger's gRPC LedgerService: protobuf in, the writer's calls, protobuf out.

Each method translates one request for :class:`ledger.writer.LedgerServer` and its answer back;
every error, the writer's domain errors included, becomes a status in one place,
:func:`ledger.grpc_errors.status_for` (through ``guarded``, or per event in AppendStream's
results).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import grpc

from ledger.access import ADMIN, APPEND, AccessPolicy, certificate_identities, peer_identity
from ledger.core import Receipt
from ledger.errors import StewardError
from ledger.formats import KillSwitchEngaged
from ledger.grpc_errors import ServiceError, guarded, status_for
from ledger.limits import RATE_LIMITED_CODE, AppendLimits, PenaltyBox
from ledger.staging import StagedBatch
from ledger.writer import MAX_BATCH_EVENTS, LedgerServer, PublishedCheckpoint
from steward.v1 import ledger_pb2, ledger_pb2_grpc

# The server process's log: its lines keep the name operators and the docs know them by.
log = logging.getLogger("ledger.server")

SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


def _receipt_pb(r: Receipt) -> ledger_pb2.Receipt:
    return ledger_pb2.Receipt(
        seq=r.seq, leaf_hash=r.leaf_hash, received_at=r.received_at, duplicate=r.duplicate
    )


def _checkpoint_pb(cp: PublishedCheckpoint) -> ledger_pb2.Checkpoint:
    return ledger_pb2.Checkpoint(
        size=cp.size, note=cp.cosigned_note, root=cp.root, origin=cp.origin
    )


_END_OF_STREAM = object()


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(
        self,
        ledger: LedgerServer,
        *,
        max_batch_events: int = MAX_BATCH_EVENTS,
        limits: AppendLimits | None = None,
        access: AccessPolicy | None = None,
        stream_idle_seconds: float = 0.0,
        penalty_box: PenaltyBox | None = None,
    ) -> None:
        self.ledger = ledger
        self.penalty_box = penalty_box
        self.max_batch_events = max_batch_events
        self.limits = limits
        self.access = access
        self.stream_idle_seconds = stream_idle_seconds

    def _may_publish(self, context: grpc.ServicerContext) -> bool:
        """Whether this caller may have a checkpoint signed and stored for its proof: one who
        may append or administer (each already makes the server write); not a read-only
        identity. Without an access file every caller may, as before."""
        if self.access is None:
            return True
        held = self.access.permissions(certificate_identities(context))
        return APPEND in held or ADMIN in held

    def _strike(self, peer: str, exc: BaseException) -> None:
        """A refusal for a rate limit is one strike of the peer towards the penalty box."""
        if (
            self.penalty_box is not None
            and isinstance(exc, ServiceError)
            and exc.status.violation_code == RATE_LIMITED_CODE
        ):
            self.penalty_box.strike(peer)

    def _signing_principals(self, staged: StagedBatch, *, skip_kill_switches: bool) -> Counter[str]:
        """Events per principal whose signature verified (a forged key id charges no one)."""
        counts: Counter[str] = Counter()
        for event in staged.events:
            if event.received is None or event.body is None:
                continue
            if skip_kill_switches and isinstance(event.body.payload, KillSwitchEngaged):
                continue
            body = event.received.event.body
            principals = set()
            for sig in event.received.event.signatures:
                info = self.ledger.key_info(sig.key_id)
                if info is not None and (info.public_key, sig.sig, body) in staged.verified:
                    principals.add(info.principal)
            counts.update(principals)
        return counts

    @guarded(log)
    def Append(
        self, request: ledger_pb2.AppendRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Receipt:
        if self.limits is None:
            return _receipt_pb(self.ledger.append(request.signed_event))
        # Decoded first, so that a kill switch is charged to its own bucket: a peer that has
        # used up its append rate on proposals or garbage can still stop a rollout.
        decoded = self.ledger.decode([request.signed_event])
        (event,) = decoded.events
        peer = peer_identity(context)
        kill_switch = event.body is not None and isinstance(event.body.payload, KillSwitchEngaged)
        if not kill_switch and self.penalty_box is not None:
            self.penalty_box.check(peer)  # before the signatures are checked
        staged = self.ledger.check_signatures(decoded)
        if kill_switch:
            self.limits.charge_kill_switch(peer)
        else:
            try:
                self.limits.charge_peer(peer, 1)
                self.limits.charge_principals(
                    self._signing_principals(staged, skip_kill_switches=False)
                )
            except ServiceError as exc:
                self._strike(peer, exc)
                raise
        (result,) = self.ledger.append_batch([request.signed_event], staged=staged)
        if isinstance(result, BaseException):
            raise result
        return _receipt_pb(result)

    @guarded(log)
    def AppendStream(
        self, request_iterator: Iterator[ledger_pb2.AppendBatch], context: grpc.ServicerContext
    ) -> Iterator[ledger_pb2.AppendBatchResult]:
        # Per-event refusals travel in the results; only whole-batch failures end the stream.
        # Three stages overlap: a reader thread decodes and verifies the next batches; this
        # thread checks them into the ledger (submit) as soon as they are staged, without
        # waiting for the earlier batches' store writes; the ledger's writer stores them. Each
        # batch is answered in order once durable.
        limits, peer = self.limits, peer_identity(context) if self.limits is not None else ""
        if limits is not None:
            try:
                limits.check_peer(peer)  # before any thread is started for this stream
            except ServiceError as exc:
                self._strike(peer, exc)
                raise
        decoded: queue.Queue[Any] = queue.Queue(maxsize=2)
        ahead: queue.Queue[Any] = queue.Queue(maxsize=3)
        stop = threading.Event()
        wake = threading.Event()  # something was staged, or a submitted batch is done
        last_batch = [time.monotonic()]  # when the client last sent a batch (the idle clock)

        def put(into: queue.Queue[Any], item: Any) -> bool:
            while not stop.is_set():
                try:
                    into.put(item, timeout=0.5)
                    if into is ahead:
                        wake.set()
                    return True
                except queue.Full:
                    continue
            return False

        def read_ahead() -> None:
            # Decodes batch n+1 while the signature worker checks batch n (check_ahead).
            try:
                for batch in request_iterator:
                    last_batch[0] = time.monotonic()
                    if len(batch.signed_events) > self.max_batch_events:
                        put(
                            decoded,
                            ServiceError(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"batch {batch.batch_id} has {len(batch.signed_events)} events, "
                                f"at most {self.max_batch_events} are accepted",
                                violation_code="BATCH_TOO_LARGE",
                                field="signed_events",
                            ),
                        )
                        return
                    if limits is not None:  # before decoding: garbage costs the peer too
                        try:
                            limits.charge_peer(peer, len(batch.signed_events))
                        except ServiceError as exc:
                            self._strike(peer, exc)
                            raise
                    events = list(batch.signed_events)
                    if not put(decoded, (batch.batch_id, events, self.ledger.decode(events))):
                        return
            except grpc.RpcError:  # the client cancelled or vanished: nothing worth a log line
                put(
                    decoded,
                    ServiceError(
                        grpc.StatusCode.CANCELLED,
                        "the client's request stream ended before its last batch",
                    ),
                )
                return
            except BaseException as exc:  # the client's stream failed: end ours the same way
                put(decoded, exc)
                return
            put(decoded, _END_OF_STREAM)

        def check_ahead() -> None:
            while not stop.is_set():
                try:
                    item = decoded.get(timeout=0.5)
                except queue.Empty:
                    continue
                if not isinstance(item, tuple):
                    put(ahead, item)
                    return
                batch_id, events, batch = item
                try:
                    staged = self.ledger.check_signatures(batch)
                    if limits is not None:
                        limits.charge_principals(
                            self._signing_principals(staged, skip_kill_switches=True)
                        )
                except BaseException as exc:
                    self._strike(peer, exc)
                    put(ahead, exc)
                    return
                if not put(ahead, (batch_id, events, staged)):
                    return

        threading.Thread(target=read_ahead, name="append-stream-reader", daemon=True).start()
        threading.Thread(target=check_ahead, name="append-stream-checker", daemon=True).start()
        inflight: deque[tuple[int, Any]] = deque()  # (batch id, request) in submission order
        last = None  # the previous request: a batch is never stored ahead of it
        end: Any = None  # _END_OF_STREAM or the exception that ends the client's stream
        try:
            while True:
                wake.clear()  # before looking: a change after this look wakes the wait below
                items: list[Any] = []
                if end is None:
                    try:
                        items.append(
                            self._next_staged(ahead, last_batch)
                            if not inflight
                            else ahead.get_nowait()
                        )
                        while isinstance(items[-1], tuple):
                            items.append(ahead.get_nowait())
                    except queue.Empty:
                        pass
                batches = [it for it in items if isinstance(it, tuple)]
                if batches:
                    # The batches staged together are checked together (group commit).
                    requests = self.ledger.submit(
                        [staged for _, _, staged in batches], on_done=wake.set, after=last
                    )
                    last = requests[-1]
                    inflight.extend(
                        zip([batch_id for batch_id, _, _ in batches], requests, strict=True)
                    )
                if items and not isinstance(items[-1], tuple):
                    end = items[-1]
                while inflight and inflight[0][1].done:
                    batch_id, request = inflight.popleft()
                    outcome = request.outcome
                    if isinstance(outcome, BaseException):
                        raise outcome
                    yield ledger_pb2.AppendBatchResult(
                        batch_id=batch_id, results=self._results_pb(outcome)
                    )
                if not inflight and end is not None:
                    if end is _END_OF_STREAM:
                        return
                    raise end
                if not batches and inflight:
                    wake.wait()
        finally:
            stop.set()

    def _next_staged(self, ahead: queue.Queue[Any], last_batch: list[float]) -> Any:
        """The next staged batch (or end) of an AppendStream with nothing in flight.

        A client that sends nothing for ``stream_idle_seconds`` holds a stream slot (and its
        threads) for nothing: its stream is ended, so idle streams cannot keep the slots from
        the clients that have events to append (issue #14, attack 1).
        """
        idle = self.stream_idle_seconds
        if idle <= 0:
            return ahead.get()
        while True:
            left = last_batch[0] + idle - time.monotonic()
            if left <= 0:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this AppendStream sent no batch for {idle:g} s: ended to free its slot; "
                    "open a stream when there are events to append",
                    violation_code="STREAM_IDLE",
                    field="stream_idle_seconds",
                )
            try:
                return ahead.get(timeout=left)
            except queue.Empty:
                continue

    @staticmethod
    def _results_pb(outcome: list[Receipt | StewardError]) -> list[ledger_pb2.AppendResult]:
        results = []
        for i, result in enumerate(outcome):
            if isinstance(result, Receipt):
                results.append(ledger_pb2.AppendResult(index=i, receipt=_receipt_pb(result)))
            else:
                results.append(
                    ledger_pb2.AppendResult(index=i, error=status_for(result, log).detail())
                )
        return results

    @guarded(log)
    def Get(
        self, request: ledger_pb2.GetRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.EntryMessage:
        entry_bytes, leaf = self.ledger.get(request.seq)
        return ledger_pb2.EntryMessage(seq=request.seq, entry_bytes=entry_bytes, leaf_hash=leaf)

    @guarded(log)
    def GetGenesis(
        self, request: ledger_pb2.GetGenesisRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.EntryMessage:
        entry_bytes, leaf = self.ledger.get(0)
        return ledger_pb2.EntryMessage(seq=0, entry_bytes=entry_bytes, leaf_hash=leaf)

    @guarded(log)
    def Read(
        self, request: ledger_pb2.ReadRequest, context: grpc.ServicerContext
    ) -> Iterator[ledger_pb2.EntryMessage]:
        seq = request.start_seq
        remaining = request.limit or None
        while context.is_active() and not self.ledger.stopping:
            for s, entry_bytes, leaf in self.ledger.read(seq, remaining):
                yield ledger_pb2.EntryMessage(seq=s, entry_bytes=entry_bytes, leaf_hash=leaf)
                seq = s + 1
                if remaining is not None:
                    remaining -= 1
            if not request.follow or remaining == 0:
                return
            # Wake at once on appends; the timeout lets a cancelled stream end promptly.
            self.ledger.wait_for_size(seq, timeout=0.5)
        if self.ledger.stopping:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, "the ledger server is stopping; reconnect"
            )

    @guarded(log)
    def GetHead(
        self, request: ledger_pb2.GetHeadRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Head:
        head = self.ledger.head()
        cp = head.checkpoint
        return ledger_pb2.Head(
            size=head.size,
            root=head.root,
            last_leaf_hash=head.last_leaf_hash,
            ledger=self.ledger.ledger_name,
            origin=self.ledger.origin,
            checkpoint_size=cp.size if cp else 0,
        )

    @guarded(log)
    def GetCheckpoint(
        self, request: ledger_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Checkpoint:
        size = request.size if request.HasField("size") else None
        return _checkpoint_pb(self.ledger.checkpoint(size, publish_now=request.publish_now))

    @guarded(log)
    def ListCheckpoints(
        self, request: ledger_pb2.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> Iterator[ledger_pb2.Checkpoint]:
        for cp in self.ledger.checkpoints():
            yield _checkpoint_pb(cp)

    @guarded(log)
    def GetInclusionProof(
        self, request: ledger_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.InclusionProof:
        tree_size = request.tree_size if request.HasField("tree_size") else None
        p = self.ledger.inclusion_proof(
            request.seq, tree_size, may_publish=self._may_publish(context)
        )
        return ledger_pb2.InclusionProof(
            index=request.seq,
            tree_size=p.tree_size,
            proof=p.proof,
            checkpoint=p.note,
            leaf_hash=p.leaf_hash,
            root=p.root,
        )

    @guarded(log)
    def GetConsistencyProof(
        self, request: ledger_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.ConsistencyProof:
        size2 = request.size2 if request.HasField("size2") else None
        p = self.ledger.consistency_proof(
            request.size1, size2, may_publish=self._may_publish(context)
        )
        return ledger_pb2.ConsistencyProof(
            size1=p.size1,
            size2=p.size2,
            proof=p.proof,
            root1=p.root1,
            root2=p.root2,
            checkpoint1=self.ledger.note_for(p.size1),
            checkpoint2=self.ledger.note_for(p.size2),
        )

    @guarded(log)
    def GetVkey(
        self, request: ledger_pb2.GetVkeyRequest, context: grpc.ServicerContext
    ) -> ledger_pb2.Vkey:
        key = self.ledger.vkey()
        return ledger_pb2.Vkey(
            vkey=key.vkey, key_name=key.name, public_key=key.public_key, origin=self.ledger.origin
        )
