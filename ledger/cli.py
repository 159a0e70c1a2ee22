"""`steward`: the command line for people who govern a Steward ledger.

It signs locally with the user's key file and talks gRPC to the ledger server named by
--server or $STEWARD_SERVER. Private keys never leave the machine; passphrases come from an
environment variable (never a flag, so they stay out of shell history and process lists).
Every deliberate error derives from StewardError and is reported once, here, as one line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ledger.errors import BadKeyError, FormatError, StewardError
from ledger.events import new_body, sign
from ledger.formats import (
    ApprovalRecorded,
    EvalRecorded,
    KeyGranted,
    KeyRevoked,
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    Metric,
    ModelRef,
    Payload,
    PlanStep,
    PolicySet,
    ProposalOrigin,
    ProposalSubmitted,
    RequiredEval,
    RootKey,
    Signature,
    SignedEvent,
    Target,
    TargetSelector,
    decode_body,
    decode_signed_event,
    encode_signed_event,
    signed_bytes,
)
from ledger.keys import PrivateKey, PublicKey, canonical_signatures
from ledger.names import printable
from ledger.rules import check
from ledger.state import LedgerState

EPILOG = """\
environment:
  STEWARD_SERVER            ledger address (host:port) when --server is not given
  STEWARD_KEY_PASSPHRASE    passphrase of encrypted key files (or name another
                            variable with --passphrase-env)
  STEWARD_TLS_CA            CA bundle of the server (enables TLS) when --tls-ca is not given
  STEWARD_TLS_CERT          client certificate (mutual TLS) when --tls-cert is not given
  STEWARD_TLS_KEY           its private key when --tls-key is not given

a governance flow, end to end, from an empty directory (two roots, a ledger server
on SQLite, an agent's proposal, evals, an approval, a kill switch engaged and released;
policy.yaml as in docs/GOVERNANCE.md):
  steward keys new root-a.pem --principal human:ada@example.org
  steward keys new root-b.pem --principal human:grace@example.org
  steward keys new ledger.pem
  steward serve --db ledger.db --checkpoint-key ledger.pem --listen 127.0.0.1:7443 &
  export STEWARD_SERVER=127.0.0.1:7443
  steward ledger init --name prod --origin example.org/steward/prod \\
      --root root-a.pub.pem --root root-b.pub.pem --threshold 2 \\
      --checkpoint-public ledger.pub.pem --key root-a.pem --key root-b.pem
  steward keys new agent.pem --principal agent:researcher-7
  steward keys new evalbot.pem --principal service:evalbot
  steward keys new alice.pem --principal human:alice@example.org
  steward keys new bob.pem --principal human:bob@example.org
  steward keys new oncall.pem --principal human:oncall@example.org
  steward grant --public-key agent.pub.pem --role proposer --key root-a.pem --key root-b.pem
  steward grant --public-key evalbot.pub.pem --role evaluator --key root-a.pem --key root-b.pem
  steward grant --public-key alice.pub.pem --role approver --key root-a.pem --key root-b.pem
  steward grant --public-key bob.pub.pem --role approver --key root-a.pem --key root-b.pem
  steward grant --public-key oncall.pub.pem --role operator --key root-a.pem --key root-b.pem
  steward policy set policy.yaml --key root-a.pem --key root-b.pem
  steward propose --target models/model-server --image registry.example/model:v2 --key agent.pem
  steward eval --proposal 3fa2c1 --suite safety --metric refusal_rate=0.99 --key evalbot.pem
  steward eval --proposal 3fa2c1 --suite quality --metric accuracy=0.91 --key evalbot.pem
  steward approve --proposal 3fa2c1 --key alice.pem
  steward kill engage --target models/model-server --reason "error spike" --key oncall.pem
  steward kill release --target models/model-server --key alice.pem --key bob.pem
  steward log --follow
  steward store check --store sqlite:ledger.db     # offline: every entry and checkpoint

(3fa2c1 stands for the first digits of the hash `steward propose` printed.) A key made with
--principal names its principal in its .pub.pem, so grant and ledger init --root need no
separate principal; --principal and PRINCIPAL=FILE still say it explicitly.
"""


class CliError(StewardError):
    """A usage problem found after parsing (a bad value, a missing file)."""


# --------------------------------------------------------------------------------------------
# Helpers


def _passphrase(args: argparse.Namespace) -> bytes | None:
    value = os.environ.get(args.passphrase_env)
    return value.encode() if value else None


def _load_key(path: str, args: argparse.Namespace) -> PrivateKey:
    try:
        return PrivateKey.load(Path(path), _passphrase(args))
    except BadKeyError as exc:
        if "passphrase" in str(exc) and sys.stdin.isatty():
            secret = getpass.getpass(f"passphrase for {path}: ").encode()
            return PrivateKey.load(Path(path), secret)
        raise


def _keys(args: argparse.Namespace) -> list[PrivateKey]:
    if not args.key:
        raise CliError("this command signs an event: give at least one --key FILE")
    return [_load_key(k, args) for k in args.key]


def _load_public(path: str) -> PublicKey:
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


def _principal_of(path: str) -> str | None:
    """The principal a public key file names, if `keys new --principal` recorded one."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise CliError(f"cannot read public key {path}: {exc.strerror}") from exc
    for line in text.split("-----BEGIN", 1)[0].splitlines():
        if line.startswith(PRINCIPAL_LABEL):
            return line.removeprefix(PRINCIPAL_LABEL).strip() or None
    return None


def _principal(given: str | None, public_key: str, flag: str) -> str:
    principal = given or _principal_of(public_key)
    if not principal:
        raise CliError(
            f"{public_key} names no principal: give {flag} (or make the key with "
            "steward keys new FILE --principal KIND:NAME)"
        )
    return principal


def _client(args: argparse.Namespace) -> Any:
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


def _ledger_name(args: argparse.Namespace, client: Any) -> str:
    return str(decode_body(client.genesis().entry.body).ledger)


def _emit(args: argparse.Namespace, payload: Payload, refs: tuple[bytes, ...] = ()) -> int:
    """Sign `payload` with every --key, then write it to --out or submit it."""
    client = None if args.out and args.ledger_name else _client(args)
    ledger = args.ledger_name or _ledger_name(args, client)
    event = sign(new_body(ledger, payload, refs=refs), *_keys(args))
    return _deliver(args, event, client)


def _deliver(args: argparse.Namespace, event: SignedEvent, client: Any = None) -> int:
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
    client = client or _client(args)
    receipt = client.append(event)
    body = decode_body(event.body)
    note = " (already in the log: original receipt)" if receipt.duplicate else ""
    print(f"appended {body.type} at seq {receipt.seq}, entry hash {receipt.leaf_hash.hex()}{note}")
    return 0


def _fold(client: Any) -> tuple[LedgerState, list[Any]]:
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


def _proposal_hash(text: str, state: LedgerState) -> bytes:
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


def _target(text: str, flag: str = "--target") -> tuple[str, str]:
    if text.count("/") != 1 or not all(text.split("/")):
        raise CliError(f"{flag} {text!r}: expected NAMESPACE/DEPLOYMENT")
    ns, dep = text.split("/")
    return ns, dep


def _scope(args: argparse.Namespace, state: LedgerState | None) -> KillScope:
    chosen = [x for x in (args.all, args.target, args.proposal) if x]
    if len(chosen) != 1:
        raise CliError("choose exactly one scope: --all, --target NS/DEP or --proposal HASH")
    if args.all:
        return KillScope("GLOBAL")
    if args.target:
        ns, dep = _target(args.target)
        return KillScope("TARGET", ns, dep)
    if state is None:
        raise CliError("--proposal needs the server to resolve the hash")
    return KillScope("PROPOSAL", proposal=_proposal_hash(args.proposal, state))


def _parse_time(text: str, flag: str) -> int:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(
            f"{flag} {text!r}: expected an ISO 8601 time such as 2027-01-31T00:00:00+00:00"
        ) from exc
    if moment.tzinfo is None:
        raise CliError(f"{flag} {text!r}: add a time zone (e.g. +00:00)")
    return int(moment.timestamp() * 1000)


# --------------------------------------------------------------------------------------------
# Commands


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = PrivateKey.generate()
    path = Path(args.file)
    passphrase = _passphrase(args) if args.encrypt else None
    if args.encrypt and not passphrase:
        raise CliError(f"--encrypt needs a passphrase in ${args.passphrase_env}")
    try:
        key.save(path, passphrase)
    except FileExistsError as exc:
        raise CliError(f"{path} exists; refusing to overwrite a key") from exc
    public_path = path.with_name(path.name.removesuffix(".pem") + ".pub.pem")
    label = f"{PRINCIPAL_LABEL}{args.principal}\n".encode() if args.principal else b""
    public_path.write_bytes(label + key.public.to_pem())
    print(f"private key: {path} (mode 600{', encrypted' if passphrase else ''})")
    print(f"public key:  {public_path}")
    if args.principal:
        print(f"principal:   {args.principal}")
    print(f"key id:      {key.key_id.hex()}")
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    data = Path(args.file).read_bytes()
    public = (
        _load_key(args.file, args).public if b"PRIVATE KEY" in data else PublicKey.from_pem(data)
    )
    print(f"key id: {public.key_id_hex}")
    principal = None if b"PRIVATE KEY" in data else _principal_of(args.file)
    if principal:
        print(f"principal: {principal}")
    print(public.to_pem().decode(), end="")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    roots = []
    for spec in args.root:
        given, sep, pem = spec.partition("=")
        if not sep:
            given, pem = "", spec
        principal = _principal(given, pem, f"--root PRINCIPAL={pem}")
        roots.append(RootKey(principal, _load_public(pem).raw))
    checkpoint = _load_public(args.checkpoint_public)
    payload = LedgerGenesis(
        origin=args.origin,
        roots=tuple(roots),
        root_threshold=args.threshold,
        checkpoint_key_name=args.checkpoint_name or args.origin,
        checkpoint_public_key=checkpoint.raw,
    )
    event = sign(new_body(args.name, payload), *_keys(args))
    return _deliver(args, event)


def cmd_grant(args: argparse.Namespace) -> int:
    expires = _parse_time(args.expires, "--expires") if args.expires else None
    principal = _principal(args.principal, args.public_key, "--principal")
    payload = KeyGranted(principal, _load_public(args.public_key).raw, tuple(args.role), expires)
    return _emit(args, payload)


def cmd_revoke(args: argparse.Namespace) -> int:
    try:
        key_id = bytes.fromhex(args.key_id)
    except ValueError as exc:
        raise CliError(f"--key-id {args.key_id!r}: expected 64 hex digits") from exc
    if len(key_id) != 32:
        raise CliError(f"--key-id: expected 64 hex digits, observed {len(args.key_id)}")
    return _emit(args, KeyRevoked(key_id, args.reason))


def load_policy(path: Path) -> PolicySet:
    """A PolicySet from YAML; errors name the field."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read policy {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CliError(f"{path}: expected a mapping at the top level")

    def need(mapping: dict[str, Any], key: str, where: str) -> Any:
        if key not in mapping:
            raise CliError(f"{path}: {where}{key} is required")
        return mapping[key]

    try:
        selector = need(doc, "selector", "")
        plan = [
            PlanStep(
                int(need(s, "weight", f"plan[{i}].")),
                int(s.get("hold_seconds", 0)),
                bool(s.get("health_gate", False)),
            )
            for i, s in enumerate(need(doc, "plan", ""))
        ]
        evals = [
            RequiredEval(
                str(need(r, "suite", f"required_evals[{i}].")),
                str(need(r, "metric", f"required_evals[{i}].")),
                str(r.get("op", "GE")).upper(),
                float(need(r, "threshold", f"required_evals[{i}].")),
            )
            for i, r in enumerate(doc.get("required_evals", []))
        ]
        approvals = doc.get("approvals", {})
        kill = doc.get("kill_switch", {})
        return PolicySet(
            policy_id=str(need(doc, "id", "")),
            selector=TargetSelector(
                str(need(selector, "namespace", "selector.")), str(selector.get("deployment", "*"))
            ),
            required_evals=tuple(evals),
            approvals_required=int(approvals.get("required", 2)),
            approver_kinds=tuple(approvals.get("kinds", ["human"])),
            plan=tuple(plan),
            veto_on_reject=bool(approvals.get("veto_on_reject", True)),
            kill_release_approvals=int(kill.get("release_approvals", 2)),
            kill_rollback_bound_ms=int(kill.get("rollback_bound_ms", 5000)),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise CliError(f"{path}: {exc}") from exc


def cmd_policy_set(args: argparse.Namespace) -> int:
    return _emit(args, load_policy(Path(args.file)))


def cmd_propose(args: argparse.Namespace) -> int:
    ns, dep = _target(args.target)
    payload = ProposalSubmitted(
        target=Target(ns, dep),
        candidate=ModelRef(args.image, args.digest),
        baseline=ModelRef(args.baseline_image, args.baseline_digest),
        rationale=args.rationale,
        origin=ProposalOrigin(args.agent, args.run),
    )
    return _emit(args, payload)


def cmd_eval(args: argparse.Namespace) -> int:
    client = _client(args)
    state, _ = _fold(client)
    proposal = _proposal_hash(args.proposal, state)
    metrics: dict[str, float] = {}
    for spec in args.metric:
        name, sep, value = spec.partition("=")
        try:
            metrics[name] = float(value)
        except ValueError as exc:
            raise CliError(f"--metric {spec!r}: expected NAME=NUMBER") from exc
        if not sep or not name:
            raise CliError(f"--metric {spec!r}: expected NAME=NUMBER")
    payload = EvalRecorded(
        proposal, args.suite, tuple(Metric(k, metrics[k]) for k in sorted(metrics)), args.artifact
    )
    event = sign(new_body(state.ledger, payload), *_keys(args))
    return _deliver(args, event, client)


def cmd_decide(args: argparse.Namespace, decision: str) -> int:
    client = _client(args)
    state, _ = _fold(client)
    proposal = state.proposals[_proposal_hash(args.proposal, state)]
    required = sorted({r.suite for r in state.policy_of(proposal).required_evals})
    evals = tuple(
        proposal.latest_evals[s].entry_hash for s in required if s in proposal.latest_evals
    )
    if decision == "APPROVE":
        missing = [s for s in required if s not in proposal.latest_evals]
        if missing:
            raise CliError(f"cannot approve yet: no eval recorded for {', '.join(missing)}")
        for s in required:
            info = proposal.latest_evals[s]
            print(
                f"binding to the latest {s} eval {info.entry_hash.hex()[:12]} ({'pass' if info.passed else 'FAIL'})"
            )
    payload = ApprovalRecorded(proposal.entry_hash, decision, evals, args.comment)
    rollback = proposal.latest_rollback
    if rollback is not None:
        print(
            f"binding to the latest rollback at seq {rollback.seq} ({rollback.entry_hash.hex()[:12]})"
        )
    event = sign(new_body(state.ledger, payload, refs=state.binding_refs(payload)), *_keys(args))
    return _deliver(args, event, client)


def cmd_kill(args: argparse.Namespace) -> int:
    client = _client(args)
    # Engaging stays one round trip unless a proposal must be resolved; a release names the
    # engagement it releases, which only the folded log tells.
    releasing = args.action == "release"
    state, _ = _fold(client) if args.proposal or releasing else (None, [])
    scope = _scope(args, state)
    ledger = state.ledger if state else _ledger_name(args, client)
    payload: Payload = (
        KillSwitchReleased(scope, args.reason)
        if releasing
        else KillSwitchEngaged(scope, args.reason)
    )
    refs: tuple[bytes, ...] = ()
    if releasing and state is not None:
        refs = state.binding_refs(payload)  # none when nothing is engaged: the ledger says so
        if refs:
            print(
                f"binding to the engagement at seq {state.kill_switches[scope]} ({refs[0].hex()[:12]})"
            )
    event = sign(new_body(ledger, payload, refs=refs), *_keys(args))
    return _deliver(args, event, client)


def cmd_sign(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        event = decode_signed_event(path.read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    message = signed_bytes(event.body)
    sigs = list(event.signatures)
    for key in _keys(args):
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
    return _deliver(args, event)


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    state, _ = _fold(client)
    if args.json:
        print(json.dumps(status_document(state), indent=2))
        return 0
    print(
        printable(
            f"ledger {state.ledger} ({state.origin}): {state.size} entries, root threshold {state.root_threshold}"
        )
    )
    if state.kill_switches:
        from ledger.timeline import scope_text

        for scope, seq in state.kill_switches.items():
            print(printable(f"  KILL SWITCH ENGAGED: {scope_text(scope)} since seq {seq}"))
    for doc in status_document(state)["proposals"]:
        if args.proposal and not doc["hash"].startswith(args.proposal):
            continue
        print(
            printable(
                f"  proposal {doc['hash'][:12]} {doc['target']} → {doc['candidate']}: {doc['phase']}"
                f" step {doc['step']} weight {doc['weight']}%, approvals {len(doc['approvers'])}/{doc['approvals_required']}"
                f" ({', '.join(doc['approvers']) or 'none'})"
            )
        )
        for suite, ev in doc["evals"].items():
            print(
                printable(
                    f"      eval {suite}: {'pass' if ev['passed'] else 'FAIL ' + '; '.join(ev['failures'])}"
                )
            )
    return 0


def status_document(state: LedgerState) -> dict[str, Any]:
    proposals = []
    for h, p in state.proposals.items():
        current = p.current
        proposals.append(
            {
                "hash": h.hex(),
                "seq": p.seq,
                "target": f"{p.proposal.target.namespace}/{p.proposal.target.deployment}",
                "candidate": p.proposal.candidate.image,
                "proposer": p.proposer,
                "phase": p.phase,
                "step": current.step if current else None,
                "weight": current.weight if current else 0,
                "approvers": state.valid_approvers(p),
                "approvals_required": state.policy_of(p).approvals_required,
                "kill_switch": state.kill_switch_for(p) is not None,
                "evals": {
                    s: {
                        "passed": e.passed,
                        "failures": list(e.failures),
                        "hash": e.entry_hash.hex(),
                    }
                    for s, e in p.latest_evals.items()
                },
            }
        )
    return {
        "ledger": state.ledger,
        "size": state.size,
        "proposals": proposals,
        "kill_switches": [
            {
                "kind": s.kind,
                "namespace": s.namespace,
                "deployment": s.deployment,
                "proposal": s.proposal.hex() if s.proposal else None,
                "seq": seq,
            }
            for s, seq in state.kill_switches.items()
        ],
    }


def cmd_log(args: argparse.Namespace) -> int:
    from ledger.timeline import lines

    client = _client(args)
    state = LedgerState()
    entries = client.read(0, follow=args.follow)
    for line in lines(entries, state):
        if args.from_seq is None or int(line.split()[0]) >= args.from_seq:
            print(line, flush=True)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    client = _client(args)
    cp = client.checkpoint(publish_now=args.publish)
    print(cp.note, end="")
    return 0


def cmd_proof(args: argparse.Namespace) -> int:
    client = _client(args)
    print(client.tlog_proof(args.seq), end="")
    return 0


def cmd_vkey(args: argparse.Namespace) -> int:
    print(_client(args).vkey())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ledger.export import write_export

    client = _client(args)
    count = write_export(client, Path(args.out), progress=not args.quiet)
    print(f"exported {count} entries to {args.out}")
    return 0


def _open_store(spec: str, flag: str) -> tuple[Any, str]:
    """A store to read, never to write: `sqlite:PATH` (opened read-only, never created) or
    `kafka:BOOTSTRAP/TOPIC` (not claimed: a running server is not disturbed)."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite" and rest:
        from ledger.store.sqlite import SQLiteLogStore

        path = Path(rest)
        if not path.is_file():
            raise CliError(f"{flag} {spec}: no such file")
        return SQLiteLogStore(path, read_only=True), f"sqlite:{path.name}"
    if kind == "kafka" and "/" in rest:
        from ledger.store.kafka import KafkaLogStore, KafkaStoreConfig

        bootstrap, topic = rest.rsplit("/", 1)
        config = KafkaStoreConfig(
            bootstrap_servers=bootstrap,
            topic=topic,
            create_topics=False,
            client_id="steward-store-check",
        )
        return KafkaLogStore(config), f"kafka:{topic}"
    raise CliError(f"{flag} {spec!r}: expected sqlite:PATH or kafka:BOOTSTRAP/TOPIC")


def _progress(done: int, total: int) -> None:
    of = f" of {total:,} positions" if total else ""
    print(f"  ... {done:,} records read{of}", file=sys.stderr, flush=True)


def cmd_store_check(args: argparse.Namespace) -> int:
    from ledger.recovery import check_export, check_store

    try:
        if args.export:
            report = check_export(Path(args.export), progress=_progress)
        else:
            store, name = _open_store(args.store, "--store")
            try:
                report = check_store(store, name, progress=_progress)
            finally:
                store.close()
    except StewardError as exc:  # damage, or a store that cannot be read: one line, exit 2
        print(f"steward: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0


def cmd_store_restore(args: argparse.Namespace) -> int:
    from ledger.recovery import restore_sqlite

    kind, _, target = args.to.partition(":")
    if kind != "sqlite" or not target:
        raise CliError(f"--to {args.to!r}: expected sqlite:PATH (a new file)")
    try:
        if args.export:
            report = restore_sqlite(Path(target), export=Path(args.export), progress=_progress)
        else:
            store, name = _open_store(args.source, "--from")
            try:
                report = restore_sqlite(Path(target), store=store, source=name, progress=_progress)
            finally:
                store.close()
    except StewardError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()[:-1]))
    print(
        f"restored {report.entries:,} entries and {len(report.checkpoints)} checkpoints "
        f"to {target}; start the server on it with --db {target}"
    )
    return 0


STORE_CHECK_HELP = """\
Verify a ledger store offline, as the server does on start: every record decodes and
extends the chain (seqs contiguous, each prev the leaf hash of the one before, every
signature and rule), and every stored checkpoint verifies with the genesis's checkpoint
key and carries the root of the entries it covers. Records written around the server are
listed and skipped (docs/DESIGN.md 2.2). Changes nothing: a SQLite file is opened
read-only, a Kafka topic is read without claiming it.

exit status: 0 clean, 2 damaged or unreadable (the last line names the first damage:
the seq and what is wrong).

examples:
  steward store check --store sqlite:ledger.db
  steward store check --store kafka:broker1:9092,broker2:9092/steward-prod  # not run here: a production cluster (docs/RECOVERY.md runs it on a test broker)
  steward store check --export ledger-export.avro

what to do about damage: docs/RECOVERY.md
"""

STORE_RESTORE_HELP = """\
Write a new SQLite store from a good copy of the ledger: an export (steward export), a
SQLite backup, or the Kafka topic. The whole copy is verified first (as store check does);
from a store only the ledger's own chain is copied, with its checkpoints. Never writes
over an existing file; the new file is checked again before it is moved into place.

examples:
  steward store restore --export ledger-export.avro --to sqlite:ledger.restored.db
  steward store restore --from sqlite:backup/ledger.db --to sqlite:ledger.restored.db
  steward store restore --from kafka:broker1:9092/steward-prod --to sqlite:ledger.db  # not run here: a production cluster (docs/RECOVERY.md runs it on a test broker)

then: stop the server, move the damaged file aside, move the restored one into its place
(or start with --db on it). docs/RECOVERY.md has every step.
"""


def cmd_serve(args: argparse.Namespace) -> int:
    from ledger.server import run

    return int(run(args, args.serve_parser) or 0)


def cmd_kafka_acls(args: argparse.Namespace) -> int:
    from ledger.store.kafka_acls import role_acls

    acls = role_acls(
        args.role,
        args.topic,
        transactional_id=args.transactional_id or "",
        create_topics=args.create_topics,
    )
    print(
        f"# Steward {args.role} on ledger topic {args.topic}: {len(acls)} ACLs, nothing more "
        '(docs/KAFKA.md, "Security")'
    )
    for acl in acls:
        print(f"# {acl.operation} on {acl.resource_type} {acl.name}: {acl.needed_for}")
        print(acl.kafka_acls_line(args.principal, args.bootstrap, args.command_config))
    return 0


KAFKA_ACLS_EPILOG = """\
roles:
  writer   the ledger server (python -m ledger.server --kafka-bootstrap ...)
  reader   steward-controller --store kafka:..., the projector: reads the log, writes nothing
  auditor  steward-audit --kafka ...: reads the log and its checkpoints only

example (run the printed lines as a cluster admin, or pipe them to sh):
  steward kafka acls --role writer --principal User:ledger --topic steward-prod \\
      --bootstrap kafka-1:9093 --command-config admin.properties

Every line grants one operation on one literal resource; none is optional (each was removed
in turn in the tests, and the role then fails with a message naming it). The consumer group
steward-end-offsets needs no ACL: no role ever joins it.
"""


# --------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steward",
        description="Govern a Steward ledger: keys, policies, proposals, evals, approvals, kill switches.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="ledger gRPC address host:port (default $STEWARD_SERVER)")
    common.add_argument("--tls-ca", help="CA bundle to verify the server (enables TLS)")
    common.add_argument("--tls-cert", help="client certificate for mutual TLS")
    common.add_argument("--tls-key", help="client private key for mutual TLS")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    common.add_argument(
        "--passphrase-env",
        default="STEWARD_KEY_PASSPHRASE",
        help="environment variable holding key passphrases (default STEWARD_KEY_PASSPHRASE)",
    )
    # `sign` takes only the keys: it signs a file in place and neither submits nor writes
    # elsewhere, so the event-making commands' --out and --ledger-name mean nothing to it.
    keys_only = argparse.ArgumentParser(add_help=False)
    keys_only.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="FILE",
        help="private key file to sign with (repeat for several signers)",
    )
    signing = argparse.ArgumentParser(add_help=False, parents=[keys_only])
    signing.add_argument(
        "--out",
        metavar="FILE",
        help="write the signed event to FILE instead of submitting it, so others can `steward sign` it",
    )
    signing.add_argument(
        "--ledger-name", help="ledger name, to sign offline with --out without asking the server"
    )

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        help_text: str,
        func: Callable[[argparse.Namespace], int],
        parents: Sequence[argparse.ArgumentParser] = (common,),
        target: Any = sub,
    ) -> argparse.ArgumentParser:
        p = target.add_parser(name, help=help_text, description=help_text, parents=list(parents))
        p.set_defaults(func=func)
        return p

    keys = sub.add_parser("keys", help="create and show Ed25519 keys").add_subparsers(
        dest="keys_cmd", required=True, metavar="ACTION"
    )
    p = add(
        "new",
        "create an Ed25519 key pair (PKCS#8 PEM, mode 600) and its .pub.pem",
        cmd_keys_new,
        target=keys,
    )
    p.add_argument("file", help="private key file to create (never overwritten)")
    p.add_argument(
        "--encrypt", action="store_true", help="encrypt with the passphrase in --passphrase-env"
    )
    p.add_argument(
        "--principal",
        metavar="KIND:NAME",
        help="who holds the key (human:, agent: or service:); written into the .pub.pem, "
        "where grant and ledger init --root read it when not given",
    )
    p = add("show", "print a key's id and public PEM", cmd_keys_show, target=keys)
    p.add_argument("file", help="private or public key file")

    ledger = sub.add_parser("ledger", help="create a ledger").add_subparsers(
        dest="ledger_cmd", required=True, metavar="ACTION"
    )
    p = add(
        "init",
        "sign the genesis (seq 0): roots, their threshold and the checkpoint key",
        cmd_init,
        (common, signing),
        target=ledger,
    )
    p.add_argument("--name", required=True, help="the ledger's name (every event names it)")
    p.add_argument(
        "--origin", required=True, help="checkpoint origin line, e.g. example.org/steward/prod"
    )
    p.add_argument(
        "--root",
        action="append",
        required=True,
        metavar="[PRINCIPAL=]PUBPEM",
        help="a root key (repeat); the principal defaults to the one its .pub.pem names",
    )
    p.add_argument(
        "--threshold",
        type=int,
        required=True,
        help="distinct root principals needed to sign root actions",
    )
    p.add_argument(
        "--checkpoint-public",
        required=True,
        metavar="PUBPEM",
        help="public key the ledger signs checkpoints with",
    )
    p.add_argument("--checkpoint-name", help="signed-note key name (default: the origin)")

    # The same flags as `python -m ledger.server` (one parser), not the client's --tls-*.
    from ledger.server_flags import add_server_arguments

    p = add(
        "serve",
        "run a ledger server (SQLite or Kafka; TLS, access file, limits: docs/API.md)",
        cmd_serve,
        parents=(),
    )
    add_server_arguments(p, default_listen="127.0.0.1:7443")
    p.set_defaults(serve_parser=p)

    p = add("grant", "grant a key roles (needs the root threshold)", cmd_grant, (common, signing))
    p.add_argument(
        "--principal",
        help="kind:name, kind one of human, agent, service "
        "(default: the principal the public key file names)",
    )
    p.add_argument("--public-key", required=True, metavar="PUBPEM")
    p.add_argument(
        "--role",
        action="append",
        required=True,
        choices=["root", "proposer", "evaluator", "approver", "operator", "monitor", "controller"],
    )
    p.add_argument("--expires", help="ISO 8601 expiry with a time zone")

    p = add(
        "revoke",
        "revoke a key: by the root threshold, or by the key itself",
        cmd_revoke,
        (common, signing),
    )
    p.add_argument("--key-id", required=True, help="64 hex digits")
    p.add_argument("--reason", default="revoked")

    policy = sub.add_parser("policy", help="set a rollout policy").add_subparsers(
        dest="policy_cmd", required=True, metavar="ACTION"
    )
    p = add(
        "set",
        "set a policy from a YAML file (format: docs/GOVERNANCE.md)",
        cmd_policy_set,
        (common, signing),
        target=policy,
    )
    p.add_argument("file")

    p = add(
        "propose",
        "propose a candidate model for a target Deployment",
        cmd_propose,
        (common, signing),
    )
    p.add_argument("--target", required=True, metavar="NS/DEPLOYMENT")
    p.add_argument("--image", required=True)
    p.add_argument("--digest", default="", help="model digest, e.g. sha256:...")
    p.add_argument("--baseline-image", default="")
    p.add_argument("--baseline-digest", default="")
    p.add_argument("--rationale", default="")
    p.add_argument("--agent", default="", help="originating agent")
    p.add_argument("--run", default="", help="originating run id")

    p = add(
        "eval",
        "record an eval result (pass/fail is recomputed from the policy)",
        cmd_eval,
        (common, signing),
    )
    p.add_argument(
        "--proposal", required=True, help="proposal hash or a unique prefix (6+ hex digits)"
    )
    p.add_argument("--suite", required=True)
    p.add_argument("--metric", action="append", required=True, metavar="NAME=VALUE")
    p.add_argument("--artifact", default="", help="artifact digest of the eval run")

    for name, decision in (("approve", "APPROVE"), ("reject", "REJECT")):
        p = add(
            name,
            f"{name} a proposal, bound to the latest eval of every required suite",
            functools.partial(cmd_decide, decision=decision),
            (common, signing),
        )
        p.add_argument("--proposal", required=True, help="proposal hash or a unique prefix")
        p.add_argument("--comment", default="")

    kill = sub.add_parser("kill", help="engage or release a kill switch").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    for action, help_text in (
        ("engage", "stop now: one operator or approver signature"),
        ("release", "allow rollouts again: k distinct approvers on one event"),
    ):
        p = add(action, help_text, cmd_kill, (common, signing), target=kill)
        p.add_argument("--all", action="store_true", help="global scope")
        p.add_argument("--target", metavar="NS/DEPLOYMENT")
        p.add_argument("--proposal", metavar="HASH")
        p.add_argument("--reason", required=action == "engage", default="released")

    p = add(
        "sign",
        "add your signature to an event file written with --out; the file is rewritten in "
        "place and not submitted (`steward submit FILE` does that)",
        cmd_sign,
        (common, keys_only),
    )
    p.add_argument("file")
    p = add("submit", "submit an event file", cmd_submit)
    p.add_argument("file")

    p = add(
        "status",
        "proposals, rollouts and kill switches, from a locally verified fold of the log",
        cmd_status,
    )
    p.add_argument("--proposal", help="only proposals whose hash starts with this")
    p.add_argument("--json", action="store_true")

    p = add("log", "a readable timeline of the log", cmd_log)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    p.add_argument("--from", dest="from_seq", type=int, help="start printing at this seq")

    p = add("checkpoint", "print the latest signed checkpoint", cmd_checkpoint)
    p.add_argument(
        "--publish",
        action="store_true",
        help="ask the ledger to sign one at the current size first",
    )
    p = add("proof", "print an inclusion proof as a C2SP tlog-proof bundle", cmd_proof)
    p.add_argument("--seq", type=int, required=True)
    add("vkey", "print the ledger's checkpoint verifier key (C2SP vkey)", cmd_vkey)
    kafka = sub.add_parser("kafka", help="Kafka cluster set-up for a ledger").add_subparsers(
        dest="kafka_cmd", required=True, metavar="ACTION"
    )
    p = kafka.add_parser(
        "acls",
        help="print the kafka-acls.sh commands a role needs (writer, reader, auditor)",
        description="Print the kafka-acls.sh commands that give one Steward role exactly the "
        "ACLs it needs on a ledger's topics, each with what it is for. Nothing is "
        "sent to Kafka: review the lines, then run them as a cluster admin.",
        epilog=KAFKA_ACLS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_kafka_acls)
    p.add_argument("--role", required=True, choices=["writer", "reader", "auditor"])
    p.add_argument(
        "--principal",
        required=True,
        metavar="User:NAME",
        help="the role's Kafka principal: User:<SASL user>, or the name its TLS "
        "certificate maps to",
    )
    p.add_argument(
        "--topic",
        required=True,
        help="the ledger topic (its companions TOPIC.checkpoints and TOPIC.writers are included)",
    )
    p.add_argument(
        "--transactional-id",
        metavar="ID",
        help="writer: the server's transactional id (default steward-ledger-TOPIC; "
        "steward-ledger-NAME with the server's --ledger NAME)",
    )
    p.add_argument(
        "--create-topics",
        action="store_true",
        help="writer: add Create on the three topics (a server without "
        "--no-create-topics creates missing ones)",
    )
    p.add_argument(
        "--bootstrap",
        default="BOOTSTRAP",
        metavar="HOST:PORT",
        help="put into each line's --bootstrap-server",
    )
    p.add_argument(
        "--command-config",
        default="admin.properties",
        metavar="FILE",
        help="the admin's client properties for kafka-acls.sh (default admin.properties)",
    )

    p = add("export", "write the offline export file auditors verify", cmd_export)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true", help="no progress line")

    store = sub.add_parser(
        "store", help="check a ledger store offline, or restore one"
    ).add_subparsers(dest="store_cmd", required=True, metavar="ACTION")
    p = store.add_parser(
        "check",
        help="verify every entry and checkpoint of a store, offline",
        description=STORE_CHECK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_store_check)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--store",
        metavar="SPEC",
        help="sqlite:PATH or kafka:BOOTSTRAP/TOPIC (as steward-controller names it)",
    )
    source.add_argument("--export", metavar="FILE", help="an export file (steward export)")
    p = store.add_parser(
        "restore",
        help="write a new SQLite store from an export, a backup or a topic",
        description=STORE_RESTORE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_store_restore)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from",
        dest="source",
        metavar="SPEC",
        help="sqlite:PATH or kafka:BOOTSTRAP/TOPIC: a good copy of the store",
    )
    source.add_argument("--export", metavar="FILE", help="an export file (steward export)")
    p.add_argument(
        "--to", required=True, metavar="sqlite:PATH", help="the new SQLite file to write"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except StewardError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, CliError | FormatError | BadKeyError) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
