"""librdkafka's log lines and error callbacks, into Python logging without a flood.

Every confluent-kafka client of the Kafka store (its producers, its end-offset consumer) gets a
`LibrdkafkaLog` as its ``logger`` and ``error_cb``. The lines go to the Python logger
``kafka.librdkafka``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from confluent_kafka import KafkaError

# librdkafka's own lines: under kafka-python's "kafka" logger, so that one level (the ledger
# server's --kafka-log-level) governs both clients.
rdkafka_log = logging.getLogger("kafka.librdkafka")


class LibrdkafkaLog:
    """librdkafka's log lines and error callback, into Python logging without a flood.

    Given to each producer and to the end-offset consumer as its ``logger`` and ``error_cb``.
    confluent-kafka calls ``log(level, "%s [%s] %s", facility, client name, text)`` with
    librdkafka's syslog level already mapped to a Python level, and ``error(KafkaError)`` for
    errors the client reports on its own (a broker down, all brokers down, ...): both only
    while one of our threads is in ``poll``/``flush`` (the producers' under the store's writer
    lock, the consumer's under its end-offset lock, so two threads may log here at once). With
    a broker gone librdkafka repeats the same connection failure every reconnect backoff, and
    the store raises StoreUnavailableError (logged by the caller) anyway, so: librdkafka's warnings
    and worse are logged at WARNING (it says ALERT for a fence, which the claim log then
    decides), each distinct line (numbers ignored) at most once per `window` seconds, its
    repeats at DEBUG and counted in the next WARNING of the same line; notices and info at
    INFO, debug at DEBUG. Fatal errors are not
    rate-limited (confluent-kafka raises them from ``flush``/``poll`` rather than calling
    `error`, but a fatal one passed here is logged at once).
    """

    _NUMBERS = re.compile(r"\d+")

    def __init__(
        self, topic: str, *, window: float = 60.0, logger: logging.Logger | None = None
    ) -> None:
        self.topic = topic
        self.window = window
        self.logger = logger or rdkafka_log
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, ...], tuple[float, int]] = {}  # key -> (last logged, repeats)
        # The last authorization failure librdkafka reported, for the store to name: a
        # transaction refused on AddPartitionsToTxn shows only here, its records come back as
        # _PURGE_QUEUE and the abort as INVALID_TXN_STATE.
        self.authorization_failure: str | None = None

    def log(self, level: int, msg: str, *args: Any) -> None:
        text = msg % args if args else msg
        if "authorization failed" in text.lower():
            self.authorization_failure = text
        if level >= logging.WARNING:
            facility = str(args[0]) if args else ""
            level, text = self._limited(("log", facility, self._NUMBERS.sub("#", text)), text)
        elif level > logging.DEBUG:
            level = logging.INFO
        self.logger.log(level, "topic %s: librdkafka: %s", self.topic, text)

    def error(self, err: KafkaError) -> None:
        text = f"{err.name()}: {err.str()}"
        if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            # The end-offset consumer's FindCoordinator for END_OFFSETS_GROUP, which it never
            # joins: no group ACL is needed (tested), so a refusal is not worth a warning.
            self.logger.debug(
                "topic %s: librdkafka error %s (the end-offset consumer's group "
                "is never joined; harmless)",
                self.topic,
                text,
            )
            return
        if "AUTHORIZATION_FAILED" in err.name():
            self.authorization_failure = text
        if err.fatal():
            level = logging.WARNING
        else:
            level, text = self._limited(
                ("error", str(err.code()), self._NUMBERS.sub("#", err.str())), text
            )
        self.logger.log(level, "topic %s: librdkafka error %s", self.topic, text)

    def _limited(self, key: tuple[str, ...], text: str) -> tuple[int, str]:
        now = time.monotonic()
        with self._lock:
            last, repeats = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.window:
                self._seen[key] = (last, repeats + 1)
                return logging.DEBUG, text
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # distinct lines are few; never grow without bound
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        if repeats:
            text += f" ({repeats} more like it in the last {self.window:.0f}s, at DEBUG)"
        return logging.WARNING, text
