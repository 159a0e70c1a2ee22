"""The claim log's record: who claimed a Kafka ledger, as `KafkaLogStore.claim_writer` reads it.

The claim log is the companion topic ``<topic>.writers``; one JSON record per claim (key = the
claim token), the last one names the writer. The protocol that writes and checks claims is
`ledger.store.kafka.KafkaLogStore.claim_writer` (its module docstring and docs/KAFKA.md, "Who
writes", say why it is safe); this module holds the record itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass

# The store's logger: claim log lines read as the store's own.
log = logging.getLogger("ledger.store.kafka")


def claim_record(token: str, transactional_id: str, topic: str) -> bytes:
    """Our claim record's value: the token decides, the rest is for the operator (no secrets)."""
    record = {
        "token": token,
        "transactional_id": transactional_id,
        "topic": topic,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "claimed_at_ms": int(time.time() * 1000),
    }
    return json.dumps(record, sort_keys=True).encode()


@dataclass(frozen=True)
class WriterClaim:
    """One record of the claim log ``<topic>.writers``: who claimed the ledger, when.

    Only `token` decides anything; host, pid and time are for the operator reading a
    FencedError or the topic. A record that is not a claim has an empty token (nobody's).
    """

    position: int
    token: str
    host: str = ""
    pid: int = 0
    claimed_at_ms: int = 0

    @classmethod
    def parse(cls, position: int, value: bytes) -> WriterClaim:
        try:
            data = json.loads(value)
            token = data["token"]
            if not isinstance(token, str) or not token:
                raise ValueError("token is not a non-empty string")
            return cls(
                position,
                token,
                str(data.get("host", "")),
                int(data.get("pid", 0)),
                int(data.get("claimed_at_ms", 0)),
            )
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("claim log record at offset %d is not a claim (%s)", position, exc)
            return cls(position, "")

    def describe(self) -> str:
        if not self.token:
            return f"an unreadable record at offset {self.position}"
        return (
            f"claim {self.token[:12]} by {self.host or '?'} pid {self.pid} at "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.claimed_at_ms / 1000))}"
            f" (offset {self.position})"
        )
