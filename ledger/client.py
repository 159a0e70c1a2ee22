"""The Python client of LedgerService: sign, submit and follow the log.

What research-infra code imports::

    from ledger.client import LedgerClient
    with LedgerClient("ledger.internal:7443", ca_file="ca.pem") as client:
        receipt = client.submit(payload, [my_key])
        for entry in client.read(0, follow=True):
            ...

Every call is retried on UNAVAILABLE and DEADLINE_EXCEEDED with exponential backoff. That is
safe for appends because the ledger is idempotent on the event id: a retried append of the same
signed event returns the original receipt (``duplicate=True``). Refusals raise
:class:`LedgerRpcError` with the gRPC code and the violated rule. Entries read from the server
are decoded and their hash chain is verified locally; the server is not trusted for either.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ledger.core import Receipt
from ledger.errors import StewardError, VerificationError
from ledger.events import new_body, sign
from ledger.formats import (
    ZERO_HASH,
    LogEntry,
    Payload,
    SignedEvent,
    decode_log_entry,
    encode_signed_event,
)
from ledger.grpc_errors import Status
from ledger.keys import PrivateKey
from steward.v1 import ledger_pb2, ledger_pb2_grpc

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class LedgerRpcError(StewardError):
    """A call the ledger refused or could not serve."""

    def __init__(self, status: Status) -> None:
        super().__init__(f"{status.code.name}: {status.message}")
        self.status = status
        self.code = status.code
        self.violation_code = status.violation_code
        self.field = status.field
        self.message = status.message
        self.error_id = status.error_id

    @property
    def retryable(self) -> bool:
        return self.status.retryable

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> LedgerRpcError:
        return cls(Status.from_rpc_error(err))


@dataclass(frozen=True)
class Head:
    size: int
    root: bytes
    last_leaf_hash: bytes
    ledger: str
    origin: str
    checkpoint_size: int


@dataclass(frozen=True)
class CheckpointInfo:
    size: int
    note: str  # C2SP signed note
    root: bytes
    origin: str


@dataclass(frozen=True)
class InclusionProof:
    index: int
    tree_size: int
    proof: tuple[bytes, ...]
    checkpoint: str  # signed note for tree_size ("" if none was published at that size)
    leaf_hash: bytes
    root: bytes


@dataclass(frozen=True)
class ConsistencyProof:
    size1: int
    size2: int
    proof: tuple[bytes, ...]
    root1: bytes
    root2: bytes
    checkpoint1: str
    checkpoint2: str


def _receipt(pb: ledger_pb2.Receipt) -> Receipt:
    return Receipt(pb.seq, pb.leaf_hash, pb.received_at, pb.duplicate)


def _checkpoint(pb: ledger_pb2.Checkpoint) -> CheckpointInfo:
    return CheckpointInfo(pb.size, pb.note, pb.root, pb.origin)


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class LedgerClient:
    """A connection to one ledger server.

    TLS: give ``ca_file`` (the CA that signed the server certificate; PEM bytes or a path);
    for mutual TLS also ``cert_file`` and ``key_file``. ``server_name`` overrides the name
    checked against the server certificate. Without ``ca_file`` the channel is plaintext.
    """

    def __init__(
        self,
        target: str,
        *,
        ca_file: bytes | str | Path | None = None,
        cert_file: bytes | str | Path | None = None,
        key_file: bytes | str | Path | None = None,
        server_name: str | None = None,
        timeout: float = 10.0,
        retries: int = 6,
        backoff: float = 0.05,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if ca_file is not None or cert_file is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_pem(ca_file),
                private_key=_pem(key_file),
                certificate_chain=_pem(cert_file),
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = ledger_pb2_grpc.LedgerServiceStub(self._channel)
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._ledger_name: str | None = None

    # -- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _sleep(self, attempt: int) -> None:
        delay = min(2.0, self.backoff * 2**attempt)
        time.sleep(delay * (0.5 + random.random() / 2))  # jitter spreads reconnecting clients

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in itertools.count():
            try:
                return fn()
            except grpc.RpcError as err:
                error = LedgerRpcError.from_rpc_error(err)
                if not error.retryable or attempt >= self.retries:
                    raise error from None
            self._sleep(attempt)
        raise AssertionError("unreachable")

    def _unary(self, method: Callable[..., T], request: Any) -> T:
        return self._call(lambda: method(request, timeout=self.timeout))

    # -- appends -----------------------------------------------------------------------------

    def append(self, event: SignedEvent | bytes) -> Receipt:
        """Append one signed event; a retry after a lost answer returns the original receipt."""
        data = event if isinstance(event, bytes) else encode_signed_event(event)
        return _receipt(self._unary(self._stub.Append, ledger_pb2.AppendRequest(signed_event=data)))

    def append_many(
        self, events: Iterable[SignedEvent | bytes], *, batch_size: int = 256
    ) -> list[Receipt | LedgerRpcError]:
        """Append many events over one AppendStream, in batches (one transaction each).

        Returns a result per event, in order: its receipt or the refusal. If the stream fails
        (server restart, store unavailable), the unanswered batches are sent again; appends are
        idempotent, so an event stored before the failure gets its original receipt.
        """
        data = [e if isinstance(e, bytes) else encode_signed_event(e) for e in events]
        batches = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
        results: list[list[Receipt | LedgerRpcError]] = []
        attempt = 0
        while len(results) < len(batches):
            first = len(results)
            requests = (
                ledger_pb2.AppendBatch(signed_events=batch, batch_id=first + i)
                for i, batch in enumerate(batches[first:])
            )
            try:
                for reply in self._stub.AppendStream(requests, timeout=self.timeout * len(batches)):
                    results.append(
                        [
                            _receipt(r.receipt)
                            if r.HasField("receipt")
                            else LedgerRpcError(Status.from_detail(r.error))
                            for r in reply.results
                        ]
                    )
            except grpc.RpcError as err:
                error = LedgerRpcError.from_rpc_error(err)
                if not error.retryable or attempt >= self.retries:
                    raise error from None
                self._sleep(attempt)
                attempt += 1
        return [r for batch in results for r in batch]

    def ledger_name(self) -> str:
        if self._ledger_name is None:
            self._ledger_name = self.genesis().body.ledger
        return self._ledger_name

    def submit(
        self,
        payload: Payload,
        keys: Sequence[PrivateKey],
        *,
        refs: tuple[bytes, ...] = (),
        event_id: bytes | None = None,
    ) -> Receipt:
        """Build a body for this ledger, sign it with every key and append it."""
        body = new_body(self.ledger_name(), payload, refs=refs, event_id=event_id)
        return self.append(sign(body, *keys))

    # -- reads -------------------------------------------------------------------------------

    def _entry(self, pb: ledger_pb2.EntryMessage, expected_seq: int) -> LogEntry:
        e = decode_log_entry(pb.entry_bytes)
        if e.seq != expected_seq or pb.seq != expected_seq:
            raise VerificationError(
                f"the server sent seq {e.seq} (labelled {pb.seq}), expected {expected_seq}"
            )
        if e.leaf_hash != pb.leaf_hash:
            raise VerificationError(f"entry {e.seq}: leaf hash does not match the entry bytes")
        return e

    def get(self, seq: int) -> LogEntry:
        return self._entry(self._unary(self._stub.Get, ledger_pb2.GetRequest(seq=seq)), seq)

    def genesis(self) -> LogEntry:
        return self._entry(self._unary(self._stub.GetGenesis, ledger_pb2.GetGenesisRequest()), 0)

    def read(
        self, start: int = 0, *, limit: int | None = None, follow: bool = False
    ) -> Iterator[LogEntry]:
        """Entries from `start`, decoded, with the hash chain checked as they arrive.

        With ``follow`` it keeps waiting for new entries, reconnecting after a server restart.
        """
        prev = ZERO_HASH if start == 0 else self.get(start - 1).leaf_hash
        seq = start
        remaining = limit
        attempt = 0
        while remaining is None or remaining > 0:
            request = ledger_pb2.ReadRequest(start_seq=seq, limit=remaining or 0, follow=follow)
            try:
                for pb in self._stub.Read(request, timeout=None if follow else self.timeout * 10):
                    e = self._entry(pb, seq)
                    if e.entry.prev != prev:
                        raise VerificationError(
                            f"entry {seq}: prev {e.entry.prev.hex()} is not the hash of entry "
                            f"{seq - 1} ({prev.hex()}): the chain is broken"
                        )
                    yield e
                    attempt = 0
                    prev, seq = e.leaf_hash, seq + 1
                    if remaining is not None:
                        remaining -= 1
                if not follow:
                    return
                # A follow stream only ends when the server stops: reconnect like on an error.
                self._sleep(attempt)
            except grpc.RpcError as err:
                error = LedgerRpcError.from_rpc_error(err)
                if not error.retryable or attempt >= self.retries:
                    raise error from None
                self._sleep(attempt)
                attempt += 1

    def head(self) -> Head:
        pb = self._unary(self._stub.GetHead, ledger_pb2.GetHeadRequest())
        return Head(pb.size, pb.root, pb.last_leaf_hash, pb.ledger, pb.origin, pb.checkpoint_size)

    # -- checkpoints and proofs ---------------------------------------------------------------

    def checkpoint(self, size: int | None = None, *, publish_now: bool = False) -> CheckpointInfo:
        request = ledger_pb2.GetCheckpointRequest(publish_now=publish_now)
        if size is not None:
            request.size = size
        return _checkpoint(self._unary(self._stub.GetCheckpoint, request))

    def checkpoints(self) -> list[CheckpointInfo]:
        request = ledger_pb2.ListCheckpointsRequest()
        return self._call(
            lambda: [
                _checkpoint(pb) for pb in self._stub.ListCheckpoints(request, timeout=self.timeout)
            ]
        )

    def inclusion_proof(self, seq: int, tree_size: int | None = None) -> InclusionProof:
        request = ledger_pb2.GetInclusionProofRequest(seq=seq)
        if tree_size is not None:
            request.tree_size = tree_size
        pb = self._unary(self._stub.GetInclusionProof, request)
        return InclusionProof(
            pb.index, pb.tree_size, tuple(pb.proof), pb.checkpoint, pb.leaf_hash, pb.root
        )

    def consistency_proof(self, size1: int, size2: int | None = None) -> ConsistencyProof:
        request = ledger_pb2.GetConsistencyProofRequest(size1=size1)
        if size2 is not None:
            request.size2 = size2
        pb = self._unary(self._stub.GetConsistencyProof, request)
        return ConsistencyProof(
            pb.size1, pb.size2, tuple(pb.proof), pb.root1, pb.root2, pb.checkpoint1, pb.checkpoint2
        )

    def tlog_proof(self, seq: int) -> str:
        """A C2SP tlog-proof@v1 bundle for entry `seq` against the latest checkpoint."""
        from ledger.tlog_proof import write_tlog_proof

        p = self.inclusion_proof(seq)
        return write_tlog_proof(p.index, p.proof, p.checkpoint)

    def vkey(self) -> str:
        return self._unary(self._stub.GetVkey, ledger_pb2.GetVkeyRequest()).vkey
