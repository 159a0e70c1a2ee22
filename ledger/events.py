"""Building and signing event bodies: what a client does before it submits.

`new_body` fills in what authors usually leave to the library (a random event id, the current
time, the refs the payload names); `sign` encodes the body once and signs those exact bytes.
"""

from __future__ import annotations

import os

from ledger.clock import now_ms
from ledger.formats import EventBody, Payload, SignedEvent, encode_body, payload_hashes
from ledger.keys import PrivateKey, sign_body


def new_event_id() -> bytes:
    return os.urandom(16)


def new_body(
    ledger: str,
    payload: Payload,
    *,
    refs: tuple[bytes, ...] = (),
    event_id: bytes | None = None,
    issued_at: int | None = None,
) -> EventBody:
    """A body whose refs list every hash the payload names, then any extra `refs`."""
    named = payload_hashes(payload)
    all_refs = tuple(dict.fromkeys((*named, *refs)))
    return EventBody(
        ledger=ledger,
        event_id=event_id if event_id is not None else new_event_id(),
        issued_at=issued_at if issued_at is not None else now_ms(),
        refs=all_refs,
        payload=payload,
    )


def sign(body: EventBody, *keys: PrivateKey) -> SignedEvent:
    return sign_body(encode_body(body), keys)
