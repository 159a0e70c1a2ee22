"""Events that travel as files between signers: `steward sign` adds a signature in place,
`steward submit` appends the file's event to the ledger."""

from __future__ import annotations

import argparse
from pathlib import Path

from ledger.cli.common import CliError, deliver, signing_keys
from ledger.formats import (
    Signature,
    SignedEvent,
    decode_body,
    decode_signed_event,
    encode_signed_event,
    signed_bytes,
)
from ledger.keys import canonical_signatures


def cmd_sign(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        event = decode_signed_event(path.read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    message = signed_bytes(event.body)
    sigs = list(event.signatures)
    for key in signing_keys(args):
        if any(s.key_id == key.key_id for s in sigs):
            print(f"key {key.key_id.hex()[:12]} already signed {path.name}; skipped")
            continue
        sigs.append(Signature(key.key_id, key.sign(message)))
    # Sorted by key id, whatever order the signers came in: the only encoding the ledger takes.
    signatures = canonical_signatures(sigs)
    path.write_bytes(encode_signed_event(SignedEvent(event.body, signatures)))
    body = decode_body(event.body)
    print(f"{path}: {body.type} {body.event_id.hex()} now has {len(signatures)} signature(s)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        event = decode_signed_event(Path(args.file).read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from exc
    args.out = None
    return deliver(args, event)
