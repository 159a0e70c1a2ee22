"""The error contract between the ledger's gRPC services and their clients (docs/API.md).

Every refusal becomes one gRPC status with a precise message; a rule violation also names the
rule and the field, in trailing metadata (``steward-violation-code``,
``steward-violation-field``) for unary calls and in ``ErrorDetail`` for per-event results of
``AppendStream``. Unexpected exceptions become INTERNAL with a generic message and an error
id; their stack trace goes to the server log only.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from ledger.core import DuplicateEventIdError
from ledger.errors import (
    CheckpointKeyMismatchError,
    CheckpointNotFoundError,
    CheckpointPendingError,
    DataLossError,
    EntryNotFoundError,
    FencedError,
    FormatError,
    LedgerStartingError,
    NoGenesisError,
    OutOfRangeError,
    StewardError,
    StoreError,
)
from ledger.merkle import TreeRangeError
from ledger.rules import (
    DUPLICATE,
    MALFORMED,
    PERMISSION,
    PRECONDITION,
    UNAUTHENTICATED,
    RuleViolationError,
)
from steward.v1 import common_pb2

VIOLATION_CODE_KEY = "steward-violation-code"
VIOLATION_FIELD_KEY = "steward-violation-field"
ERROR_ID_KEY = "steward-error-id"

CATEGORY_STATUS: dict[str, grpc.StatusCode] = {
    MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    PERMISSION: grpc.StatusCode.PERMISSION_DENIED,
    PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    DUPLICATE: grpc.StatusCode.ALREADY_EXISTS,
}

# Codes the server uses for refusals that are not rules of ledger.rules.
MALFORMED_CODE = "MALFORMED"
UNKNOWN_SCHEMA_CODE = "UNKNOWN_SCHEMA"
DUPLICATE_EVENT_ID_CODE = "DUPLICATE_EVENT_ID"
FENCED_CODE = "FENCED"
STORE_UNAVAILABLE_CODE = "STORE_UNAVAILABLE"
OUT_OF_RANGE_CODE = "OUT_OF_RANGE"
CHECKPOINT_KEY_MISMATCH_CODE = "CHECKPOINT_KEY_MISMATCH"
CHECKPOINT_PENDING_CODE = "CHECKPOINT_PENDING"

# The ledger writer's refusals (ledger.writer raises them and knows nothing of gRPC): the
# status each becomes, and the violation code it carries. Their message and field pass through.
WRITER_ERROR_STATUS: dict[type[StewardError], tuple[grpc.StatusCode, str]] = {
    LedgerStartingError: (grpc.StatusCode.UNAVAILABLE, ""),
    DataLossError: (grpc.StatusCode.DATA_LOSS, ""),
    OutOfRangeError: (grpc.StatusCode.OUT_OF_RANGE, OUT_OF_RANGE_CODE),
    # A seq past the end: NOT_FOUND for Get, with the same violation code as the proofs' ranges.
    EntryNotFoundError: (grpc.StatusCode.NOT_FOUND, OUT_OF_RANGE_CODE),
    CheckpointNotFoundError: (grpc.StatusCode.NOT_FOUND, ""),
    CheckpointPendingError: (grpc.StatusCode.UNAVAILABLE, CHECKPOINT_PENDING_CODE),
    NoGenesisError: (grpc.StatusCode.FAILED_PRECONDITION, ""),
    CheckpointKeyMismatchError: (grpc.StatusCode.FAILED_PRECONDITION, CHECKPOINT_KEY_MISMATCH_CODE),
}

_STATUS_BY_NUMBER = {s.value[0]: s for s in grpc.StatusCode}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Status:
    """One gRPC status as the contract describes it."""

    code: grpc.StatusCode
    message: str
    violation_code: str = ""
    field: str = ""
    error_id: str = ""

    @property
    def retryable(self) -> bool:
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = (
            (VIOLATION_CODE_KEY, self.violation_code),
            (VIOLATION_FIELD_KEY, self.field),
            (ERROR_ID_KEY, self.error_id),
        )
        return tuple((k, v) for k, v in pairs if v)

    def detail(self) -> common_pb2.ErrorDetail:
        return common_pb2.ErrorDetail(
            code=self.code.value[0],
            status=self.code.name,
            violation_code=self.violation_code,
            field=self.field,
            message=self.message,
            error_id=self.error_id,
        )

    @classmethod
    def from_detail(cls, d: common_pb2.ErrorDetail) -> Status:
        code = _STATUS_BY_NUMBER.get(d.code, grpc.StatusCode.UNKNOWN)
        return cls(code, d.message, d.violation_code, d.field, d.error_id)

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> Status:
        """The status a client received (a grpc.RpcError is also a grpc.Call)."""
        call: Any = err
        md = {k: v for k, v in (call.trailing_metadata() or ()) if isinstance(v, str)}
        return cls(
            call.code() or grpc.StatusCode.UNKNOWN,
            call.details() or "",
            md.get(VIOLATION_CODE_KEY, ""),
            md.get(VIOLATION_FIELD_KEY, ""),
            md.get(ERROR_ID_KEY, ""),
        )


class ServiceError(StewardError):
    """A refusal the server decides itself (not one of the rules), with its status."""

    def __init__(
        self, code: grpc.StatusCode, message: str, *, violation_code: str = "", field: str = ""
    ) -> None:
        super().__init__(message)
        self.status = Status(code, message, violation_code, field)


def status_for(exc: BaseException, log: logging.Logger) -> Status:
    """Map an exception to the contract's status; unexpected ones are logged with an id."""
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, RuleViolationError):
        v = exc.violation
        return Status(CATEGORY_STATUS[v.category], str(v), v.code, v.field)
    if isinstance(exc, DuplicateEventIdError):
        return Status(grpc.StatusCode.ALREADY_EXISTS, str(exc), DUPLICATE_EVENT_ID_CODE, "event_id")
    if isinstance(exc, FormatError):
        code = UNKNOWN_SCHEMA_CODE if exc.field == "fingerprint" else MALFORMED_CODE
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc), code, exc.field)
    if isinstance(exc, FencedError):
        return Status(
            grpc.StatusCode.UNAVAILABLE,
            f"fenced: another ledger server took over this ledger; this one no longer appends ({exc})",
            FENCED_CODE,
        )
    if isinstance(exc, StoreError) and exc.retryable:
        return Status(
            grpc.StatusCode.UNAVAILABLE, f"store unavailable, retry: {exc}", STORE_UNAVAILABLE_CODE
        )
    for kind in type(exc).__mro__:
        if kind in WRITER_ERROR_STATUS:
            code, violation_code = WRITER_ERROR_STATUS[kind]
            return Status(code, str(exc), violation_code, getattr(exc, "field", ""))
    if isinstance(exc, TreeRangeError):
        return Status(grpc.StatusCode.OUT_OF_RANGE, str(exc), OUT_OF_RANGE_CODE)
    error_id = uuid.uuid4().hex[:16]
    log.error("internal_error error_id=%s type=%s", error_id, type(exc).__name__, exc_info=exc)
    return Status(
        grpc.StatusCode.INTERNAL,
        f"internal error; the server log has the details under error id {error_id}",
        error_id=error_id,
    )


def abort(context: grpc.ServicerContext, status: Status) -> NoReturn:
    md = status.metadata()
    if md:
        context.set_trailing_metadata(md)
    context.abort(status.code, status.message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def guarded(log: logging.Logger) -> Callable[[F], F]:
    """Wrap a servicer method (unary or server-streaming) so that every error follows the contract."""

    def wrap(method: F) -> F:
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from method(self, request, context)
                    return
                except Exception as exc:  # every failure becomes a status, below
                    status = status_for(exc, log)
                abort(context, status)

            return stream  # type: ignore[return-value]

        @functools.wraps(method)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return method(self, request, context)
            except Exception as exc:
                status = status_for(exc, log)
            abort(context, status)

        return unary  # type: ignore[return-value]

    return wrap
