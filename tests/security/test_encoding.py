"""Issue #14, attack 5: the signed envelope is malleable.

Listing a signature twice, or reordering the signatures, gave a second valid encoding of the
same event: whoever saw it first could submit that variant, and the author's own retry then
failed with ALREADY_EXISTS. Now one event has one encoding (signatures sorted by key id, each
key once), anything else is INVALID_ARGUMENT naming the field, and a retry is recognised by its
body. Each test runs against a real ledger server on SQLite over gRPC; the controller's replay
and the auditor are checked on the same kind of entry written straight into storage.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from audit.trust import TrustRoot
from audit.verify import verify
from controller.replay import Replayer
from ledger.client import LedgerClient, LedgerRpcError
from ledger.events import new_body
from ledger.formats import (
    KillScope,
    KillSwitchReleased,
    Signature,
    SignedEvent,
    decode_signed_event,
    encode_body,
    encode_signed_event,
    make_entry,
    signed_bytes,
)
from ledger.scenario import Cast, Flow, followed_state
from ledger.server import LedgerServerConfig, RunningServer, serve
from ledger.store.sqlite import SQLiteLogStore
from tests.audit_tamper import TAMPERS
from tests.unit.harness import Harness

CODE = grpc.StatusCode
TARGET = KillScope("TARGET", "models", "model-server")


@dataclass
class Env:
    running: RunningServer
    client: LedgerClient
    cast: Cast
    flow: Flow

    def ok(self, event: SignedEvent) -> bytes:
        receipt = self.client.append(event)
        assert not receipt.duplicate
        return receipt.leaf_hash

    def refused(self, event: SignedEvent, code: grpc.StatusCode, violation: str) -> LedgerRpcError:
        head = self.client.head()
        with pytest.raises(LedgerRpcError) as info:
            self.client.append(event)
        err = info.value
        assert (err.code, err.violation_code) == (code, violation), err.message
        assert self.client.head() == head, "a refused event changed the ledger"
        return err


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    cast = Cast.create()
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db", checkpoint_key=cast.checkpoint_key, checkpoint_every_ms=0
        )
    )
    client = LedgerClient(running.address, timeout=10, retries=0)
    try:
        yield Env(running, client, cast, Flow(cast, state=followed_state(client.read)))
    finally:
        client.close()
        running.stop(None)


def _engaged(env: Env) -> None:
    """A rollout stopped by a TARGET kill switch and rolled back: a release may follow."""
    f = env.flow
    env.ok(f.genesis())
    for grant in f.grants():
        env.ok(grant)
    env.ok(f.policy())
    p = env.ok(f.propose())
    evals = (env.ok(f.eval(p, "safety", 0.99)), env.ok(f.eval(p, "quality", 0.91)))
    env.ok(f.approve(p, evals, "alice"))
    env.ok(f.approve(p, evals, "bob"))
    env.ok(f.step(p, 0, 10, "STARTED"))
    env.ok(f.kill(TARGET))
    env.ok(f.step(p, 0, 0, "ROLLED_BACK"))


def _signed(env: Env, *signers: str) -> SignedEvent:
    """A release signed by `signers`, their signatures in exactly the order given."""
    payload = KillSwitchReleased(TARGET, "investigated, safe")
    assert env.flow.state is not None
    refs = env.flow.state().binding_refs(payload)  # the engagement it releases
    body = encode_body(new_body(env.flow.ledger, payload, refs=refs))
    message = signed_bytes(body)
    keys = [env.cast[s].key for s in signers]
    return SignedEvent(body, tuple(Signature(k.key_id, k.sign(message)) for k in keys))


def _in_key_order(env: Env, *signers: str) -> tuple[str, ...]:
    return tuple(sorted(signers, key=lambda s: env.cast[s].key.key_id))


def test_a_signature_listed_twice_is_refused_and_the_author_still_gets_in(env: Env) -> None:
    _engaged(env)
    first, second = _in_key_order(env, "alice", "bob")
    author = _signed(env, first, second)
    variant = SignedEvent(author.body, (author.signatures[0], *author.signatures))
    err = env.refused(variant, CODE.INVALID_ARGUMENT, "SIGNATURES_NOT_CANONICAL")
    assert err.field == "signatures[1]"
    env.ok(author)


def test_reordered_signatures_are_refused_and_the_author_still_gets_in(env: Env) -> None:
    _engaged(env)
    first, second = _in_key_order(env, "alice", "bob")
    author = _signed(env, first, second)
    err = env.refused(
        _signed(env, second, first), CODE.INVALID_ARGUMENT, "SIGNATURES_NOT_CANONICAL"
    )
    assert err.field == "signatures[1]"
    env.ok(author)


def test_an_identical_retry_returns_the_original_receipt(env: Env) -> None:
    _engaged(env)
    event = env.flow.release(TARGET)
    first = env.client.append(event)
    retry = env.client.append(event)
    assert retry.duplicate and (retry.seq, retry.leaf_hash) == (first.seq, first.leaf_hash)


def test_a_retry_with_another_valid_signature_set_returns_the_original_receipt(env: Env) -> None:
    # The author's release carries three approvers; a bystander strips one (two suffice) and
    # submits first. The author's retry is the same event: the original receipt, not ALREADY_EXISTS.
    _engaged(env)
    full = _signed(env, *_in_key_order(env, "alice", "bob", "carol"))
    stripped = SignedEvent(full.body, full.signatures[:2])
    first = env.client.append(stripped)
    retry = env.client.append(full)
    assert retry.duplicate and (retry.seq, retry.leaf_hash) == (first.seq, first.leaf_hash)
    assert env.client.head().size == first.seq + 1


def test_steward_sign_writes_the_signatures_in_key_id_order(tmp_path: Path) -> None:
    cast = Cast.create()
    flow = Flow(cast)
    low, high = _in_key_order_of(cast, "alice", "bob")
    for handle in (low, high):
        cast[handle].key.save(tmp_path / f"{handle}.pem")
    event = flow.release(TARGET, signers=(high,))  # written with --out by the higher key id
    path = tmp_path / "release.evt"
    path.write_bytes(encode_signed_event(event))
    subprocess.run(
        [sys.executable, "-m", "ledger.cli", "sign", str(path), "--key", f"{low}.pem"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    signed = decode_signed_event(path.read_bytes())
    assert [s.key_id for s in signed.signatures] == sorted(cast[h].key.key_id for h in (low, high))


def _in_key_order_of(cast: Cast, *handles: str) -> tuple[str, ...]:
    return tuple(sorted(handles, key=lambda h: cast[h].key.key_id))


def test_the_controller_skips_an_entry_with_reordered_signatures(tmp_path: Path) -> None:
    # Written straight into storage, bypassing the ledger: the controller's replay checks it
    # with the shared rules and does not release the switch on it.
    h = Harness()
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.kill(TARGET))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    store = SQLiteLogStore(tmp_path / "log.db")
    store.append([(e.body.event_id, e.entry_bytes) for e in h.core.entries or []])
    release = h.flow.release(TARGET)
    variant = SignedEvent(release.body, tuple(reversed(release.signatures)))
    forged = make_entry(h.core.size, h.core.state.last_hash, variant, h.tick())
    store.append([(forged.body.event_id, forged.entry_bytes)])
    replayer = Replayer(store)
    replayer.catch_up()
    assert replayer.state.invalid == 1
    assert TARGET in replayer.state.ledger.kill_switches


def test_the_auditor_reports_an_entry_with_reordered_signatures() -> None:
    code, make = TAMPERS["signatures out of key-id order"]
    log = make()
    report = verify(log.records, TrustRoot.from_json(log.trust), log.checkpoints)
    assert [f.code for f in report.findings] == [code] == ["SIGNATURES_NOT_CANONICAL"]
