"""The error contract: which exception becomes which gRPC status, with which details."""

from __future__ import annotations

import logging

import grpc
import pytest

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
    StoreUnavailableError,
    UnknownSchemaError,
)
from ledger.grpc_errors import (
    CATEGORY_STATUS,
    ERROR_ID_KEY,
    VIOLATION_CODE_KEY,
    VIOLATION_FIELD_KEY,
    ServiceError,
    Status,
    status_for,
)
from ledger.merkle import TreeRangeError
from ledger.rules import CODES, RuleViolationError, Violation

log = logging.getLogger("test.grpc_errors")
C = grpc.StatusCode


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_violation_code_maps_by_category(code: str) -> None:
    v = Violation(code, "payload.x", "observed y, expected z")
    status = status_for(RuleViolationError(v), log)
    assert status.code == CATEGORY_STATUS[CODES[code]]
    assert (status.violation_code, status.field) == (code, "payload.x")
    assert "observed y, expected z" in status.message


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("SELF_APPROVAL", C.FAILED_PRECONDITION),
        ("EVALS_MISSING", C.FAILED_PRECONDITION),
        ("KILL_SWITCH_ENGAGED", C.FAILED_PRECONDITION),
        ("BAD_SIGNATURE", C.UNAUTHENTICATED),
        ("UNKNOWN_KEY", C.UNAUTHENTICATED),
        ("KEY_REVOKED", C.PERMISSION_DENIED),
        ("ROLE_REQUIRED", C.PERMISSION_DENIED),
        ("INVALID_FIELD", C.INVALID_ARGUMENT),
        ("DUPLICATE_EVENT_ID", C.ALREADY_EXISTS),
    ],
)
def test_the_documented_examples(code: str, expected: grpc.StatusCode) -> None:
    assert status_for(RuleViolationError(Violation(code, "f", "m")), log).code == expected


def test_format_errors_are_invalid_argument() -> None:
    status = status_for(FormatError("body: truncated", field="body"), log)
    assert (status.code, status.violation_code, status.field) == (
        C.INVALID_ARGUMENT,
        "MALFORMED",
        "body",
    )
    status = status_for(UnknownSchemaError("unknown fingerprint", field="fingerprint"), log)
    assert (status.code, status.violation_code) == (C.INVALID_ARGUMENT, "UNKNOWN_SCHEMA")


def test_duplicate_event_id() -> None:
    status = status_for(DuplicateEventIdError(b"\x01" * 16, 7), log)
    assert (status.code, status.violation_code, status.field) == (
        C.ALREADY_EXISTS,
        "DUPLICATE_EVENT_ID",
        "event_id",
    )
    assert "seq 7" in status.message


def test_fenced_and_store_unavailable_are_retryable_unavailable() -> None:
    fenced = status_for(FencedError("producer fenced by epoch 4"), log)
    assert fenced.code == C.UNAVAILABLE and fenced.message.startswith(
        "fenced: another ledger server took over"
    )
    assert fenced.violation_code == "FENCED" and fenced.retryable
    store = status_for(StoreUnavailableError("database is locked"), log)
    assert (store.code, store.violation_code) == (C.UNAVAILABLE, "STORE_UNAVAILABLE")


def test_service_errors_and_ranges() -> None:
    err = ServiceError(
        C.FAILED_PRECONDITION,
        "wrong key",
        violation_code="CHECKPOINT_KEY_MISMATCH",
        field="payload.k",
    )
    assert status_for(err, log) == Status(
        C.FAILED_PRECONDITION, "wrong key", "CHECKPOINT_KEY_MISMATCH", "payload.k"
    )
    assert status_for(TreeRangeError("size 9 > 3"), log).code == C.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            LedgerStartingError("starting: the ledger is replaying its log"),
            Status(C.UNAVAILABLE, "starting: the ledger is replaying its log"),
        ),
        (
            DataLossError("the store no longer holds seq 3"),
            Status(C.DATA_LOSS, "the store no longer holds seq 3"),
        ),
        (
            OutOfRangeError("the log has 2 entries, fewer than 5"),
            Status(C.OUT_OF_RANGE, "the log has 2 entries, fewer than 5", "OUT_OF_RANGE"),
        ),
        (
            OutOfRangeError("seq 9 is not in a tree of size 4", field="seq"),
            Status(C.OUT_OF_RANGE, "seq 9 is not in a tree of size 4", "OUT_OF_RANGE", "seq"),
        ),
        (
            EntryNotFoundError("no entry at seq 7; the log has 3", field="seq"),
            Status(C.NOT_FOUND, "no entry at seq 7; the log has 3", "OUT_OF_RANGE", "seq"),
        ),
        (
            CheckpointNotFoundError("no checkpoint was published for size 4"),
            Status(C.NOT_FOUND, "no checkpoint was published for size 4"),
        ),
        (
            CheckpointPendingError("no checkpoint covers 3 entries yet", field="tree_size"),
            Status(
                C.UNAVAILABLE,
                "no checkpoint covers 3 entries yet",
                "CHECKPOINT_PENDING",
                "tree_size",
            ),
        ),
        (NoGenesisError("no genesis yet"), Status(C.FAILED_PRECONDITION, "no genesis yet")),
        (
            CheckpointKeyMismatchError("wrong key", field="payload.checkpoint_public_key"),
            Status(
                C.FAILED_PRECONDITION,
                "wrong key",
                "CHECKPOINT_KEY_MISMATCH",
                "payload.checkpoint_public_key",
            ),
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
)
def test_the_writers_domain_errors_map_to_their_statuses(
    error: Exception, expected: Status
) -> None:
    # The writer (ledger.writer) knows no gRPC: each of its refusals has one status here.
    assert status_for(error, log) == expected


def test_unexpected_errors_are_internal_without_details(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("the secret internals")
    except KeyError as exc:
        status = status_for(exc, log)
    assert status.code == C.INTERNAL and status.error_id
    assert "secret" not in status.message and status.error_id in status.message
    (record,) = [r for r in caplog.records if status.error_id in r.getMessage()]
    assert record.exc_info is not None  # the trace goes to the server log


def test_metadata_and_detail_round_trip() -> None:
    status = Status(C.PERMISSION_DENIED, "no", "ROLE_REQUIRED", "signatures")
    assert dict(status.metadata()) == {
        VIOLATION_CODE_KEY: "ROLE_REQUIRED",
        VIOLATION_FIELD_KEY: "signatures",
    }
    assert Status.from_detail(status.detail()) == status
    internal = Status(C.INTERNAL, "oops", error_id="abc")
    assert dict(internal.metadata()) == {ERROR_ID_KEY: "abc"}
    assert internal.detail().status == "INTERNAL" and internal.detail().code == 13
