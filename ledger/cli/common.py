"""What every `steward` command shares: CliError, loading keys and public keys (and the
principal a public key file names), the ledger client, signing and delivering an event, and
folding the log locally and parsing the values that refer into it (proposal hashes,
targets, times)."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from ledger.errors import BadKeyError, StewardError
from ledger.events import new_body, sign
from ledger.formats import Payload, SignedEvent, decode_body, encode_signed_event
from ledger.keys import PrivateKey, PublicKey
from ledger.rules import check
from ledger.state import LedgerState


class CliError(StewardError):
    """A usage problem found after parsing (a bad value, a missing file)."""


def key_passphrase(args: argparse.Namespace) -> bytes | None:
    value = os.environ.get(args.passphrase_env)
    return value.encode() if value else None


def load_key(path: str, args: argparse.Namespace) -> PrivateKey:
    try:
        return PrivateKey.load(Path(path), key_passphrase(args))
    except BadKeyError as exc:
        if "passphrase" in str(exc) and sys.stdin.isatty():
            secret = getpass.getpass(f"passphrase for {path}: ").encode()
            return PrivateKey.load(Path(path), secret)
        raise


def signing_keys(args: argparse.Namespace) -> list[PrivateKey]:
    if not args.key:
        raise CliError("this command signs an event: give at least one --key FILE")
    return [load_key(k, args) for k in args.key]


def load_public(path: str) -> PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read public key {path}: {exc.strerror}") from exc
    if b"PRIVATE KEY" in data:
        raise CliError(
            f"{path} holds a private key; give the public key (steward keys show --public-out)"
        )
    return PublicKey.from_pem(data)


# A public key file from `steward keys new --principal` names its principal on a line before
# the PEM block: RFC 7468 explanatory text, which PEM readers (cryptography, OpenSSL) skip.
PRINCIPAL_LABEL = "Principal: "


def principal_of(path: str) -> str | None:
    """The principal a public key file names, if `keys new --principal` recorded one."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise CliError(f"cannot read public key {path}: {exc.strerror}") from exc
    for line in text.split("-----BEGIN", 1)[0].splitlines():
        if line.startswith(PRINCIPAL_LABEL):
            return line.removeprefix(PRINCIPAL_LABEL).strip() or None
    return None


def principal_for(given: str | None, public_key: str, flag: str) -> str:
    principal = given or principal_of(public_key)
    if not principal:
        raise CliError(
            f"{public_key} names no principal: give {flag} (or make the key with "
            "steward keys new FILE --principal KIND:NAME)"
        )
    return principal


def connect(args: argparse.Namespace) -> Any:
    from ledger.client import LedgerClient

    target = args.server or os.environ.get("STEWARD_SERVER")
    if not target:
        raise CliError("no ledger server: pass --server HOST:PORT or set STEWARD_SERVER")
    return LedgerClient(
        target,
        ca_file=args.tls_ca or os.environ.get("STEWARD_TLS_CA") or None,
        cert_file=args.tls_cert or os.environ.get("STEWARD_TLS_CERT") or None,
        key_file=args.tls_key or os.environ.get("STEWARD_TLS_KEY") or None,
        timeout=args.timeout,
    )


def ledger_name(args: argparse.Namespace, client: Any) -> str:
    return str(decode_body(client.genesis().entry.body).ledger)


def emit(args: argparse.Namespace, payload: Payload, refs: tuple[bytes, ...] = ()) -> int:
    """Sign `payload` with every --key, then write it to --out or submit it."""
    client = None if args.out and args.ledger_name else connect(args)
    ledger = args.ledger_name or ledger_name(args, client)
    event = sign(new_body(ledger, payload, refs=refs), *signing_keys(args))
    return deliver(args, event, client)


def deliver(args: argparse.Namespace, event: SignedEvent, client: Any = None) -> int:
    if getattr(args, "out", None):
        Path(args.out).write_bytes(encode_signed_event(event))
        body = decode_body(event.body)
        print(
            f"wrote {body.type} {body.event_id.hex()} with {len(event.signatures)} signature(s) to {args.out}"
        )
        print(
            f"others add their signatures with: steward sign {args.out} --key FILE; then: steward submit {args.out}"
        )
        return 0
    client = client or connect(args)
    receipt = client.append(event)
    body = decode_body(event.body)
    note = " (already in the log: original receipt)" if receipt.duplicate else ""
    print(f"appended {body.type} at seq {receipt.seq}, entry hash {receipt.leaf_hash.hex()}{note}")
    return 0


def fold(client: Any) -> tuple[LedgerState, list[Any]]:
    """Read and verify the whole log locally; the server's word is not taken for anything."""
    state = LedgerState()
    entries = []
    for e in client.read(0):
        violation = check(state, e)
        if violation is not None:
            raise CliError(f"the log does not verify at seq {e.seq}: {violation}")
        state.apply(e)
        entries.append(e)
    return state, entries


def proposal_hash(text: str, state: LedgerState) -> bytes:
    text = text.lower().strip()
    matches = [h for h in state.proposals if h.hex().startswith(text)]
    if len(text) < 6:
        raise CliError(f"--proposal {text!r}: give at least 6 hex digits of the proposal hash")
    if not matches:
        raise CliError(f"--proposal {text}: no proposal hash starts with it")
    if len(matches) > 1:
        raise CliError(
            f"--proposal {text}: ambiguous, matches {len(matches)} proposals; give more digits"
        )
    return matches[0]


def parse_target(text: str, flag: str = "--target") -> tuple[str, str]:
    if text.count("/") != 1 or not all(text.split("/")):
        raise CliError(f"{flag} {text!r}: expected NAMESPACE/DEPLOYMENT")
    ns, dep = text.split("/")
    return ns, dep


def parse_time(text: str, flag: str) -> int:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(
            f"{flag} {text!r}: expected an ISO 8601 time such as 2027-01-31T00:00:00+00:00"
        ) from exc
    if moment.tzinfo is None:
        raise CliError(f"{flag} {text!r}: add a time zone (e.g. +00:00)")
    return int(moment.timestamp() * 1000)
