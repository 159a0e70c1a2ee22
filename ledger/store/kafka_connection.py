"""The Kafka store's connection check: name a connection that can never work, at once.

kafka-python cannot tell a wrong password, an untrusted CA or a plaintext client on a TLS
listener from a broker that is down: each is "socket disconnected" until its 30 s bootstrap
deadline. librdkafka names each on its first attempt, so every `KafkaLogStore` asks it first
(`check_connection`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from ledger.errors import ConfigError
from ledger.store.kafka_config import KafkaStoreConfig
from ledger.store.kafka_errors import describe

# The store's logger: these lines read as the store's own.
log = logging.getLogger("ledger.store.kafka")

# How a connection that can never succeed shows in librdkafka's errors and log lines, and what
# to tell the operator. Anything else (a refused connection, a broker starting) may pass.
_CONNECTION_VERDICTS: tuple[tuple[str, str], ...] = (
    (
        "SASL authentication error",
        "SASL authentication failed: wrong user name or password, or a mechanism the listener "
        "does not enable (sasl_mechanism)",
    ),
    (
        "certificate verify failed",
        "TLS: the broker's certificate is not signed by a CA this client trusts (ssl_cafile)",
    ),
    (
        "in state APIVERSION_QUERY",
        "the broker closed the connection before answering ApiVersions: the listener expects "
        "TLS (security protocol SSL or SASL_SSL), or this is not a Kafka listener",
    ),
    (
        "SSL connection closed by peer",
        "the broker closed the TLS connection: it requires SASL on this listener (SASL_SSL) or a "
        "client certificate (ssl_certfile, ssl_keyfile) that it trusts",
    ),
    (
        "in state AUTH_HANDSHAKE",
        "SASL handshake refused: the listener does not enable this mechanism (sasl_mechanism)",
    ),
)


class _Collected:
    """librdkafka's log lines and errors of one short-lived client, kept for a verdict."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, _level: int, msg: str, *args: Any) -> None:
        self.lines.append(msg % args if args else msg)

    def error(self, err: KafkaError) -> None:
        self.lines.append(f"{err.name()}: {err.str()}")


def check_connection(config: KafkaStoreConfig, timeout: float | None = None) -> None:
    """Connect to the cluster once with librdkafka; ConfigError at once if it can never work.

    A wrong SASL password, a broker certificate the CA file does not sign, a plaintext client
    on a TLS listener or a TLS client without the certificate the listener requires are each
    named within about a second (librdkafka reports them on the first attempt); no retry would
    help. A broker that does not answer at all (down, starting) is left to the callers' own
    timeouts: this returns after `timeout` (default: `operation_timeout_s`, at most 10 s).
    The message names the bootstrap servers, the security protocol and the user, never a
    password.
    """
    from confluent_kafka.admin import AdminClient

    seen = _Collected()
    try:
        options: dict[str, Any] = {
            **config.rdkafka_connection_options(),
            "logger": seen,
            "error_cb": seen.error,
        }
        client = AdminClient(options)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(
            f"Kafka at {config.bootstrap_servers}: librdkafka refused the "
            f"connection options: {describe(exc)}"
        ) from exc
    limit = timeout if timeout is not None else min(config.operation_timeout_s, 10.0)
    deadline = time.monotonic() + limit
    while True:
        try:
            client.list_topics(timeout=max(0.05, min(0.5, deadline - time.monotonic())))
            return
        except KafkaException:
            pass
        client.poll(0)  # serves the error callback and the log queue
        for line in seen.lines:
            for marker, verdict in _CONNECTION_VERDICTS:
                if marker in line:
                    who = (
                        f", user {config.sasl_plain_username}" if config.sasl_plain_username else ""
                    )
                    raise ConfigError(
                        f"Kafka at {config.bootstrap_servers} ({config.security_protocol}"
                        f"{who}): {verdict}. librdkafka: {line}"
                    )
        if time.monotonic() >= deadline:
            log.warning(
                "Kafka at %s: no metadata within %.0fs (%s); going on",
                config.bootstrap_servers,
                limit,
                "; ".join(seen.lines[-2:]) or "no error",
            )
            return
