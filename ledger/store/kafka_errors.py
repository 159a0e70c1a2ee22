"""What an exception from a Kafka client means, and how to name it for the operator.

librdkafka wraps its errors in ``KafkaException`` (often as the cause of another exception):
`kafka_errors` digs them out, `describe` names one in a line, `is_fencing` and
`is_end_txn_unknown_error` tell whether another writer bumped our producer epoch, `has_code` asks
for one code, `refused_topic` reads which topic an authorization failure names, and
`unavailable` builds the store's StoreUnavailableError.
"""

from __future__ import annotations

import re

from confluent_kafka import KafkaError, KafkaException

from ledger.errors import StoreUnavailableError

# librdkafka error codes meaning "another InitProducerId bumped our producer epoch". librdkafka
# reports both broker codes as its own _FENCED (a fatal error) once it has seen one; the broker
# codes are listed in case one reaches us unnormalised. Not here: TRANSACTIONAL_ID_AUTHORIZATION_
# FAILED, CLUSTER_AUTHORIZATION_FAILED and INVALID_TXN_STATE, which librdkafka also makes fatal,
# but which say nothing about another writer (a missing ACL, a protocol state error): they drop
# the producer and raise StoreUnavailableError, and the claim log is asked at the next append.
FENCING_CODES: frozenset[int] = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    }
)


def unavailable(
    topic: str, bootstrap_servers: str, what: str, exc: BaseException
) -> StoreUnavailableError:
    """The store's "Kafka topic T at SERVERS: WHAT failed: ERROR" (retry later)."""
    return StoreUnavailableError(
        f"Kafka topic {topic} at {bootstrap_servers}: {what} failed: {describe(exc)}"
    )


def kafka_errors(exc: BaseException) -> list[KafkaError]:
    """The librdkafka errors carried by `exc` and its causes, outermost first."""
    found: list[KafkaError] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KafkaException):
            found.extend(arg for arg in current.args if isinstance(arg, KafkaError))
        current = current.__cause__ or current.__context__
    return found


def describe(exc: BaseException) -> str:
    """One line for a log or an error message: the librdkafka error's name, text and flags."""
    errors = kafka_errors(exc)
    if not errors:
        return f"{type(exc).__name__}: {exc}"
    err = errors[0]
    flags = [
        name
        for name, on in (
            ("fatal", err.fatal()),
            ("retriable", err.retriable()),
            ("abortable", err.txn_requires_abort()),
        )
        if on
    ]
    return f"{err.name()}: {err.str()}" + (f" ({', '.join(flags)})" if flags else "")


def is_end_txn_unknown_error(exc: BaseException) -> bool:
    """Whether a failed commit is Kafka 4.2's UNKNOWN_SERVER_ERROR answer to EndTxn.

    librdkafka takes an EndTxn error it has no rule for as permanent: commit_transaction()
    raises it with its broker code, UNKNOWN (-1, "Unknown broker error"), as an abortable
    (txn_requires_abort) error. Only asked for errors of commit_transaction().
    """
    return is_fencing(exc) or any(e.code() == KafkaError.UNKNOWN for e in kafka_errors(exc))


def has_code(exc: BaseException, code: int) -> bool:
    """Whether `exc` (or what caused it) carries librdkafka error `code`."""
    return any(e.code() == code for e in kafka_errors(exc))


def refused_topic(log_line: str, topics: list[str]) -> str:
    """Which of `topics` librdkafka's authorization failure names (``partition "T" [0]``)."""
    match = re.search(r'partition "([^"]+)"', log_line)
    if match and match.group(1) in topics:
        return match.group(1)
    return " or ".join(dict.fromkeys(topics))


def is_fencing(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says another InitProducerId bumped our epoch.

    librdkafka turns PRODUCER_FENCED and INVALID_PRODUCER_EPOCH into its fatal _FENCED; after
    that every transactional call, produce() and flush() raise it, so the first call after the
    fence tells.
    """
    return any(e.code() in FENCING_CODES for e in kafka_errors(exc))
