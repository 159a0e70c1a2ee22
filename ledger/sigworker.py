"""A signature-checking worker: ``python -m ledger.sigworker``, driven by ledger.sigcheck.

It reads requests from stdin and answers on stdout until stdin closes. It imports nothing but
libsodium's bindings, so it starts in a few tens of milliseconds and holds no secrets.

Request:  u32 payload length, then per item: public key (32) ‖ signature (64) ‖ u32 message
          length ‖ message.
Answer:   u32 item count, then one byte per item: 1 when it verifies, else 0.
(All integers big-endian.) A malformed request ends the worker with exit status 2.
"""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

from ledger.ed25519 import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, verify_many

_U32 = struct.Struct(">I")
_HEAD = PUBLIC_KEY_SIZE + SIGNATURE_SIZE


def encode_request(items: list[tuple[bytes, bytes, bytes]]) -> bytes:
    parts = []
    for public_raw, signature, message in items:
        if len(public_raw) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            # Fixed-size fields only: a wrong size cannot verify, so send a sure refusal.
            public_raw, signature = bytes(PUBLIC_KEY_SIZE), bytes(SIGNATURE_SIZE)
        parts.append(public_raw + signature + _U32.pack(len(message)) + message)
    payload = b"".join(parts)
    return _U32.pack(len(payload)) + payload


def decode_items(payload: bytes) -> list[tuple[bytes, bytes, bytes]]:
    items = []
    view = memoryview(payload)
    i = 0
    while i < len(payload):
        if i + _HEAD + 4 > len(payload):
            raise ValueError(f"request truncated at byte {i}")
        (n,) = _U32.unpack_from(payload, i + _HEAD)
        start = i + _HEAD + 4
        if start + n > len(payload):
            raise ValueError(f"message at byte {start} runs past the request")
        items.append(
            (
                bytes(view[i : i + PUBLIC_KEY_SIZE]),
                bytes(view[i + PUBLIC_KEY_SIZE : i + _HEAD]),
                bytes(view[start : start + n]),
            )
        )
        i = start + n
    return items


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    if not data:
        return None
    if len(data) != n:
        raise ValueError(f"expected {n} bytes, received {len(data)}")
    return data


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    while True:
        head = _read_exact(inp, 4)
        if head is None:
            return 0
        (length,) = _U32.unpack(head)
        payload = _read_exact(inp, length) if length else b""
        if payload is None:
            raise ValueError("request ends after its length")
        verdicts = verify_many(decode_items(payload))
        out.write(_U32.pack(len(verdicts)) + verdicts)
        out.flush()


def main() -> int:
    try:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    except (ValueError, struct.error) as exc:
        print(f"ledger.sigworker: malformed request: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
