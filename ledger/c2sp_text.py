"""The text rules every C2SP format of the ledger shares, and the error for text that breaks them.

Signed notes, verifier keys, checkpoints and tlog-proof bundles (ledger/signed_note.py,
ledger/checkpoint.py, ledger/tlog_proof.py) are all UTF-8 text with base64 (RFC 4648 §4 standard,
with padding) and decimal numbers in them. A parse either yields exactly what was written or
fails: base64 must be canonical (re-encoding gives the same text), so one value has one spelling;
decimals have no leading zeros and stay below 2**64; text has no ASCII control characters but
newline; key names are non-empty, without spaces or '+'. Every failure raises
:class:`MalformedError`, whose message names the line and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import re

from ledger.errors import FormatError, VerificationError

MAX_UINT64 = 2**64 - 1
DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")


class MalformedError(FormatError, VerificationError):
    """Text that does not parse as a note, vkey, checkpoint or tlog-proof.

    Both a :class:`FormatError` and a :class:`VerificationError`: a verifier that catches
    ``VerificationError`` rejects malformed input as well.
    """


def b64decode_canonical(text: str, what: str) -> bytes:
    """Canonical standard base64: the only accepted spelling is what b64encode produces."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise MalformedError(f"{what}: {text!r} is not valid base64", field=what) from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedError(f"{what}: {text!r} is not canonical base64", field=what)
    return raw


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def has_control(text: str) -> bool:
    return any(ord(c) < 0x20 and c != "\n" for c in text)


def check_utf8_text(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise MalformedError(f"{what} must be str, got {type(text).__name__}", field=what)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError(f"{what} is not valid UTF-8", field=what) from None
    for i, c in enumerate(text):
        if ord(c) < 0x20 and c != "\n":
            raise MalformedError(
                f"{what} contains control character U+{ord(c):04X} at offset {i}; "
                "only newline is allowed",
                field=what,
            )


def is_valid_name(name: str) -> bool:
    """Key names: non-empty, no Unicode spaces, no '+', no control characters."""
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() for c in name)
        and not has_control(name)
    )


def check_name(name: object) -> str:
    if not isinstance(name, str) or not is_valid_name(name):
        raise MalformedError(
            f"key name {name!r} is invalid: expected non-empty text without spaces or '+'",
            field="name",
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError(f"key name {name!r} is not valid UTF-8", field="name") from None
    return name
