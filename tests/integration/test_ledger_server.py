"""The ledger server over real gRPC on a free loopback port, through ledger.client."""

from __future__ import annotations

import gc
import itertools
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from infra.pki import Pki, make_pki
from ledger.checkpoint import verify_checkpoint
from ledger.client import CheckpointInfo, Head, LedgerClient, LedgerRpcError
from ledger.core import Receipt
from ledger.errors import FencedError, StoreUnavailableError
from ledger.events import sign
from ledger.formats import (
    EVENT_BODY_SCHEMA,
    MAX_ENTRY_BYTES,
    SINGLE_OBJECT_MAGIC,
    ApprovalRecorded,
    KillScope,
    Signature,
    SignedEvent,
    decode_body,
    encode_signed_event,
)
from ledger.group_commit import Request
from ledger.keys import PrivateKey
from ledger.merkle import MerkleTree, verify_consistency, verify_inclusion
from ledger.scenario import Cast, Flow, followed_state
from ledger.server import LedgerServerConfig, RunningServer, serve
from ledger.store.sqlite import SQLiteLogStore
from ledger.tlog_proof import verify_tlog_proof
from steward.v1 import ledger_pb2, ledger_pb2_grpc

CODE = grpc.StatusCode


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

    def state(self) -> tuple[Head, CheckpointInfo | None, int]:
        try:
            latest: CheckpointInfo | None = self.client.checkpoint()
        except LedgerRpcError as exc:
            assert exc.code == CODE.NOT_FOUND
            latest = None
        return self.client.head(), latest, len(self.client.checkpoints())

    def refused(
        self,
        event: SignedEvent | bytes,
        code: grpc.StatusCode,
        violation: str,
        field: str | None = None,
    ) -> LedgerRpcError:
        before = self.state()
        with pytest.raises(LedgerRpcError) as info:
            self.client.append(event)
        err = info.value
        assert (err.code, err.violation_code) == (code, violation), err.message
        if field is not None:
            assert err.field == field
        assert self.state() == before, "a refused event changed the head or the checkpoints"
        return err


def _start(tmp_path: Path, cast: Cast, **config: object) -> RunningServer:
    return serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db",
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_ms=0,
            **config,
        )
    )  # type: ignore[arg-type]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    cast = Cast.create()
    running = _start(tmp_path, cast, checkpoint_every_entries=5)
    client = LedgerClient(running.address, timeout=10, retries=0)
    try:
        yield Env(running, client, cast, Flow(cast, state=followed_state(client.read)))
    finally:
        client.close()
        running.stop(None)


def _base(env: Env) -> None:
    env.ok(env.flow.genesis())
    for result in env.client.append_many(env.flow.grants()):
        assert isinstance(result, Receipt)
    env.ok(env.flow.policy())


def _evaluated(env: Env) -> tuple[bytes, tuple[bytes, bytes]]:
    _base(env)
    p = env.ok(env.flow.propose())
    return p, (env.ok(env.flow.eval(p, "safety", 0.99)), env.ok(env.flow.eval(p, "quality", 0.91)))


# --------------------------------------------------------------------------------------------
# The governance flow


def test_full_governance_flow(env: Env) -> None:
    flow = env.flow
    p, evals = _evaluated(env)
    # The agent's own approval is refused: SELF_APPROVAL when its key may approve at all
    # (the scenario's cast decides), else ROLE_REQUIRED.
    if "approver" in env.cast["agent"].roles:
        env.refused(
            flow.approve(p, evals, "agent"), CODE.FAILED_PRECONDITION, "SELF_APPROVAL", "signatures"
        )
    else:
        env.refused(
            flow.approve(p, evals, "agent"), CODE.PERMISSION_DENIED, "ROLE_REQUIRED", "signatures"
        )
    # Nor with another key of the same principal: separation of duties counts principals.
    second = env.cast.extra_key("agent-approver")
    env.ok(flow.grant_key(env.cast["agent"].principal, second, ("approver",)))
    env.refused(
        flow.signed_by_keys(ApprovalRecorded(p, "APPROVE", evals, "mine"), second),
        CODE.FAILED_PRECONDITION,
        "SELF_APPROVAL",
        "signatures",
    )
    env.ok(flow.approve(p, evals, "alice"))
    env.ok(flow.approve(p, evals, "bob"))
    env.ok(flow.step(p, 0, 10, "STARTED"))
    scope = KillScope("TARGET", "models", "model-server")
    env.ok(flow.kill(scope))
    env.refused(flow.step(p, 1, 50, "ADVANCED"), CODE.FAILED_PRECONDITION, "KILL_SWITCH_ENGAGED")
    env.ok(flow.step(p, 0, 0, "ROLLED_BACK"))
    env.refused(
        flow.release(scope, signers=("alice",)), CODE.PERMISSION_DENIED, "THRESHOLD_NOT_MET"
    )
    env.ok(flow.release(scope))

    entries = list(env.client.read(0))
    assert [e.seq for e in entries] == list(range(len(entries)))
    assert [e.body.type for e in entries][-3:] == [
        "KillSwitchEngaged",
        "RolloutStep",
        "KillSwitchReleased",
    ]
    assert env.client.genesis().body.type == "LedgerGenesis"
    tree = MerkleTree.from_leaves(e.leaf_hash for e in entries)
    assert env.client.head().root == tree.root()


# --------------------------------------------------------------------------------------------
# Bad input: the exact status, and nothing appended or published


def _valid(env: Env) -> SignedEvent:
    _base(env)
    env.client.checkpoint(publish_now=True)
    return env.flow.propose()


def test_garbage_bytes(env: Env) -> None:
    _valid(env)
    env.refused(b"definitely not avro", CODE.INVALID_ARGUMENT, "MALFORMED")


def test_truncated_avro(env: Env) -> None:
    data = encode_signed_event(_valid(env))
    env.refused(data[:-20], CODE.INVALID_ARGUMENT, "MALFORMED")


def test_unknown_schema_fingerprint(env: Env) -> None:
    data = encode_signed_event(_valid(env))
    env.refused(
        SINGLE_OBJECT_MAGIC + b"\x01" * 8 + data[10:],
        CODE.INVALID_ARGUMENT,
        "UNKNOWN_SCHEMA",
        "fingerprint",
    )


def test_unknown_body_fingerprint(env: Env) -> None:
    event = _valid(env)
    body = SINGLE_OBJECT_MAGIC + b"\x02" * 8 + event.body[10:]
    env.refused(SignedEvent(body, event.signatures), CODE.INVALID_ARGUMENT, "UNKNOWN_SCHEMA")


def test_oversized_event_is_invalid_argument(env: Env) -> None:
    event = _valid(env)
    big = SignedEvent(
        SINGLE_OBJECT_MAGIC + EVENT_BODY_SCHEMA.fingerprint + b"\x00" * (MAX_ENTRY_BYTES + 1),
        event.signatures,
    )
    env.refused(big, CODE.INVALID_ARGUMENT, "MALFORMED")


def test_message_over_grpc_limit_is_resource_exhausted(tmp_path: Path) -> None:
    cast = Cast.create()
    running = _start(tmp_path, cast, max_message_bytes=64 * 1024)
    try:
        with LedgerClient(running.address, retries=0) as client:
            with pytest.raises(LedgerRpcError) as info:
                client.append(b"\x00" * (128 * 1024))
            assert info.value.code == CODE.RESOURCE_EXHAUSTED
            assert client.head().size == 0
    finally:
        running.stop(None)


def test_bad_signature(env: Env) -> None:
    event = _valid(env)
    sig = event.signatures[0]
    forged = Signature(sig.key_id, bytes([sig.sig[0] ^ 1]) + sig.sig[1:])
    env.refused(
        SignedEvent(event.body, (forged,)), CODE.UNAUTHENTICATED, "BAD_SIGNATURE", "signatures[0]"
    )


def test_unknown_key(env: Env) -> None:
    _valid(env)
    stranger = PrivateKey.generate()
    payload = decode_body(env.flow.propose().body).payload
    env.refused(env.flow.signed_by_keys(payload, stranger), CODE.UNAUTHENTICATED, "UNKNOWN_KEY")


def test_revoked_key(env: Env) -> None:
    _valid(env)
    key = env.cast.extra_key("temp-proposer")
    env.ok(env.flow.grant_key("agent:temp", key, ("proposer",)))
    env.ok(env.flow.revoke(key.key_id))
    payload = decode_body(env.flow.propose().body).payload
    env.refused(env.flow.signed_by_keys(payload, key), CODE.PERMISSION_DENIED, "KEY_REVOKED")


def test_wrong_role(env: Env) -> None:
    _valid(env)
    env.refused(env.flow.propose(signer="evalbot"), CODE.PERMISSION_DENIED, "ROLE_REQUIRED")


def test_self_evaluation(env: Env) -> None:
    _base(env)
    p = env.ok(env.flow.propose())
    key = env.cast.extra_key("agent-eval")
    env.ok(env.flow.grant_key(env.cast["agent"].principal, key, ("evaluator",)))
    payload = decode_body(env.flow.eval(p, "safety", 0.99).body).payload
    env.refused(env.flow.signed_by_keys(payload, key), CODE.FAILED_PRECONDITION, "SELF_EVALUATION")


def test_missing_evals(env: Env) -> None:
    _base(env)
    p = env.ok(env.flow.propose())
    e1 = env.ok(env.flow.eval(p, "safety", 0.99))
    env.refused(
        env.flow.approve(p, (e1,), "alice"),
        CODE.FAILED_PRECONDITION,
        "EVALS_MISSING",
        "payload.evals",
    )


def test_kill_switch_in_force(env: Env) -> None:
    p, evals = _evaluated(env)
    env.ok(env.flow.approve(p, evals, "alice"))
    env.ok(env.flow.approve(p, evals, "bob"))
    env.ok(env.flow.kill(KillScope("GLOBAL")))
    env.refused(env.flow.step(p, 0, 10, "STARTED"), CODE.FAILED_PRECONDITION, "KILL_SWITCH_ENGAGED")


def test_same_id_different_content_is_already_exists(env: Env) -> None:
    event = _valid(env)
    env.ok(event)
    body = decode_body(event.body)
    other = sign(replace(body, issued_at=body.issued_at + 1), env.cast["agent"].key)
    env.refused(other, CODE.ALREADY_EXISTS, "DUPLICATE_EVENT_ID", "event_id")


def test_same_event_again_returns_the_original_receipt(env: Env) -> None:
    event = _valid(env)
    first = env.client.append(event)
    before = env.state()
    again = env.client.append(event)
    assert again == replace(first, duplicate=True)
    assert env.state() == before


def test_old_signature_on_a_new_body(env: Env) -> None:
    event = _valid(env)
    env.ok(event)
    body = decode_body(event.body)
    new_body_bytes = sign(replace(body, event_id=b"\x11" * 16)).body  # no signature of its own
    env.refused(
        SignedEvent(new_body_bytes, event.signatures), CODE.UNAUTHENTICATED, "BAD_SIGNATURE"
    )


def test_genesis_with_another_checkpoint_key(env: Env) -> None:
    other = Cast.create()
    env.cast.checkpoint_key, real = other.checkpoint_key, env.cast.checkpoint_key
    try:
        wrong = env.flow.genesis()
    finally:
        env.cast.checkpoint_key = real
    err = env.refused(
        wrong, CODE.FAILED_PRECONDITION, "CHECKPOINT_KEY_MISMATCH", "payload.checkpoint_public_key"
    )
    assert "checkpoint key" in err.message
    env.ok(env.flow.genesis())


def test_rule_order_before_genesis(env: Env) -> None:
    env.refused(env.flow.propose(), CODE.FAILED_PRECONDITION, "GENESIS_MISPLACED")


def test_internal_error_hides_the_details(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    event = _valid(env)

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("secret detail at /srv/ledger/private")

    monkeypatch.setattr(env.running.ledger, "append_batch", boom)
    with pytest.raises(LedgerRpcError) as info:
        env.client.append(event)
    err = info.value
    assert err.code == CODE.INTERNAL
    assert "secret" not in err.message and "Traceback" not in err.message
    assert err.error_id and err.error_id in err.message
    assert any(err.error_id in r.getMessage() and r.exc_info for r in caplog.records)


# --------------------------------------------------------------------------------------------
# Batches


def test_append_stream_reports_each_event(env: Env) -> None:
    _base(env)
    good = env.flow.propose()
    bad = env.flow.propose(signer="evalbot")
    results = env.client.append_many([good, b"junk", bad, good])
    assert isinstance(results[0], Receipt) and not results[0].duplicate
    assert isinstance(results[1], LedgerRpcError) and results[1].code == CODE.INVALID_ARGUMENT
    assert isinstance(results[2], LedgerRpcError) and results[2].violation_code == "ROLE_REQUIRED"
    assert results[3] == replace(results[0], duplicate=True)
    assert env.client.head().size == results[0].seq + 1


def test_append_stream_many_batches(env: Env) -> None:
    env.ok(env.flow.genesis())
    events = [*env.flow.grants(), env.flow.policy()]
    results = env.client.append_many(events, batch_size=3)
    assert [r.seq for r in results if isinstance(r, Receipt)] == list(range(1, len(events) + 1))


def _live(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def test_a_long_append_stream_holds_only_the_batches_in_flight(env: Env) -> None:
    """A stream's server side keeps its previous batch's request (the next one is never stored
    ahead of it), and nothing older: each request used to hold the one before, so a client
    keeping one AppendStream open held every event it ever sent in the server's memory."""
    _base(env)
    proposal = env.ok(env.flow.propose())
    batches = [
        [encode_signed_event(env.flow.health(proposal, (i + j) % 3)) for j in range(4)]
        for i in range(40)
    ]
    answered: queue.Queue[int] = queue.Queue()
    live: list[int] = []
    before = _live(Request)

    def requests() -> Iterator[ledger_pb2.AppendBatch]:
        for i, batch in enumerate(batches):
            if i:
                assert answered.get(timeout=10) == i - 1  # one batch at a time
            if i in (10, 25, 39):
                live.append(_live(Request) - before)
            yield ledger_pb2.AppendBatch(signed_events=batch, batch_id=i)

    replies = []
    for reply in env.client._stub.AppendStream(requests(), timeout=60):
        replies.append(reply)
        answered.put(reply.batch_id)
    assert [r.batch_id for r in replies] == list(range(40))
    assert all(r.HasField("receipt") for reply in replies for r in reply.results)
    # Counted against those alive before the stream (the store writer keeps its last group's):
    # at most the stream's previous request and the writer's newer group, however long the
    # stream (9, 24 and 38 when each request held the one before).
    assert max(live) <= 2, f"requests alive on the server while streaming: {live}"


def test_append_stream_checks_a_large_batch_with_the_native_verifier(env: Env) -> None:
    """A streamed batch is checked in one call of the native verifier (ledger.sigcheck, which
    scripts/setup installs), with no worker process; its verdicts refuse exactly the forged
    signatures, in place."""
    _base(env)
    events: list[SignedEvent] = []
    for i in range(48):
        event = env.flow.propose()
        if i in (7, 40):
            sig = event.signatures[0]
            event = SignedEvent(
                event.body, (Signature(sig.key_id, sig.sig[:-1] + bytes([sig.sig[-1] ^ 1])),)
            )
        events.append(event)
    checker = env.running.ledger.checker
    assert checker.native, "run `python -m infra.native build`"
    results = env.client.append_many(events, batch_size=64)
    assert checker.worker_pid() is None and checker.fallbacks == 0
    for i, r in enumerate(results):
        if i in (7, 40):
            assert isinstance(r, LedgerRpcError), i
            assert (r.code, r.violation_code, r.field) == (
                CODE.UNAUTHENTICATED,
                "BAD_SIGNATURE",
                "signatures[0]",
            )
        else:
            assert isinstance(r, Receipt), (i, r)
    assert env.client.head().size == results[-1].seq + 1


# --------------------------------------------------------------------------------------------
# Reads, checkpoints and proofs


def test_read_follow_gets_new_entries(env: Env) -> None:
    env.ok(env.flow.genesis())
    seen: list[int] = []
    done = threading.Event()

    def follow() -> None:
        for e in env.client.read(0, follow=True):
            seen.append(e.seq)
            if e.seq == 3:
                done.set()
                return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    for grant in env.flow.grants()[:3]:
        env.ok(grant)
    assert done.wait(10), seen
    assert seen == [0, 1, 2, 3]


def test_get_out_of_range(env: Env) -> None:
    env.ok(env.flow.genesis())
    with pytest.raises(LedgerRpcError) as info:
        env.client.get(5)
    assert info.value.code == CODE.NOT_FOUND


def test_checkpoints_every_n_entries_and_on_demand_are_consistent(env: Env) -> None:
    _base(
        env
    )  # genesis, then 8 grants in one batch (checkpoint at 9: a batch may overshoot), policy
    vkey = env.client.vkey()
    for i in range(5):  # sizes 11..15: the 5th entry since 9 publishes at 14
        env.ok(env.flow.propose(f"registry.example/m:v{i}", deployment=f"d{i}"))
    on_demand = env.client.checkpoint(publish_now=True)
    assert on_demand.size == env.client.head().size == 15
    cps = env.client.checkpoints()
    assert [c.size for c in cps] == [9, 14, 15]
    for c in cps:
        parsed = verify_checkpoint(c.note, vkey, env.client.head().origin)
        assert (parsed.size, parsed.root) == (c.size, c.root)
    for a, b in itertools.pairwise(cps):
        proof = env.client.consistency_proof(a.size, b.size)
        assert verify_consistency(a.size, b.size, list(proof.proof), a.root, b.root)
        assert proof.checkpoint1 == a.note and proof.checkpoint2 == b.note
    # The same size asked again gives the same note: nothing is signed twice.
    assert env.client.checkpoint(publish_now=True) == on_demand
    assert env.client.checkpoint(on_demand.size) == on_demand


def test_inclusion_proofs_verify(env: Env) -> None:
    _base(env)
    cp = env.client.checkpoint(publish_now=True)
    entries = list(env.client.read(0))
    for e in entries:
        proof = env.client.inclusion_proof(e.seq)
        assert proof.tree_size == cp.size and proof.checkpoint == cp.note
        assert verify_inclusion(e.leaf_hash, e.seq, cp.size, list(proof.proof), cp.root)
    small = env.client.inclusion_proof(2, tree_size=4)
    assert verify_inclusion(entries[2].leaf_hash, 2, 4, list(small.proof), small.root)
    bundle = env.client.tlog_proof(3)
    verify_tlog_proof(bundle, entries[3].leaf_hash, env.client.vkey(), cp.origin)
    with pytest.raises(LedgerRpcError) as info:
        env.client.inclusion_proof(0, tree_size=cp.size + 10)
    assert info.value.code == CODE.OUT_OF_RANGE


def test_inclusion_proof_publishes_a_covering_checkpoint(env: Env) -> None:
    _base(env)
    size = env.client.head().size
    proof = env.client.inclusion_proof(size - 1)
    assert proof.tree_size == size and proof.checkpoint


def test_background_checkpoints(tmp_path: Path) -> None:
    cast = Cast.create()
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "l.db",
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_entries=1000,
            checkpoint_every_ms=50,
        )
    )
    try:
        with LedgerClient(running.address) as client:
            client.append(Flow(cast).genesis())
            for _ in range(100):
                if client.checkpoints():
                    break
                time.sleep(0.05)
            assert [c.size for c in client.checkpoints()] == [1]
    finally:
        running.stop(None)


# --------------------------------------------------------------------------------------------
# Health, reflection, restart


def test_health_is_serving(env: Env) -> None:
    channel = grpc.insecure_channel(env.running.address)
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "steward.v1.LedgerService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_reflection_lists_the_services(env: Env) -> None:
    channel = grpc.insecure_channel(env.running.address)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"steward.v1.LedgerService", "grpc.health.v1.Health"} <= names
    channel.close()


def test_restart_replays_and_skips_garbage(tmp_path: Path) -> None:
    cast = Cast.create()
    flow = Flow(cast)
    running = _start(tmp_path, cast, checkpoint_every_entries=3)
    with LedgerClient(running.address) as client:
        client.append(flow.genesis())
        grants = flow.grants()
        receipts = [r for r in client.append_many(grants) if isinstance(r, Receipt)]
        head = client.head()
        checkpoints = client.checkpoints()
    running.stop(None)
    # Someone with write access to the storage slips records in, bypassing the server.
    store = SQLiteLogStore(tmp_path / "ledger.db")
    store.append([(b"\x00" * 16, b"garbage"), (b"\x01" * 16, encode_signed_event(flow.propose()))])
    store.close()
    running = _start(tmp_path, cast, checkpoint_every_entries=3)
    try:
        assert running.ledger.replay_report.skipped == 2
        with LedgerClient(running.address) as client:
            assert client.head() == head
            assert client.checkpoints() == checkpoints
            again = client.append_many(grants)
            assert again == [replace(r, duplicate=True) for r in receipts]
            nxt = client.append(flow.policy())
            assert nxt.seq == head.size  # the chain continues from the last valid entry
            assert [e.seq for e in client.read(0)] == list(range(head.size + 1))
    finally:
        running.stop(None)


def test_the_scratch_file_is_in_the_named_directory_and_nobody_can_open_it(tmp_path: Path) -> None:
    """The per-entry indexes and idle proposals go to --scratch-dir, in a file unlinked once
    open: the directory stays empty while the server appends and answers retries from it."""
    cast = Cast.create()
    flow = Flow(cast)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    running = _start(tmp_path, cast, scratch_dir=str(scratch))
    try:
        with LedgerClient(running.address) as client:
            client.append(flow.genesis())
            grants = flow.grants()
            receipts = client.append_many(grants)
            assert client.append_many(grants) == [replace(r, duplicate=True) for r in receipts]
        assert list(scratch.iterdir()) == []
        assert running.ledger._core.scratch is not None
        assert running.ledger._core.scratch.size_bytes() > 0
    finally:
        running.stop(None)


@pytest.mark.parametrize("bad", ["missing", "a-file"])
def test_a_scratch_directory_that_cannot_hold_the_file_stops_the_start(
    tmp_path: Path, bad: str
) -> None:
    from ledger.errors import ConfigError

    (tmp_path / "a-file").write_text("not a directory")
    where = tmp_path / bad
    with pytest.raises(ConfigError, match=f"the scratch directory {where} cannot hold"):
        serve(
            LedgerServerConfig(
                store=tmp_path / "ledger.db",
                checkpoint_key=PrivateKey.generate(),
                scratch_dir=str(where),
            )
        )


def test_refuses_to_start_with_another_checkpoint_key(tmp_path: Path) -> None:
    from ledger.errors import ConfigError

    cast = Cast.create()
    running = _start(tmp_path, cast)
    with LedgerClient(running.address) as client:
        client.append(Flow(cast).genesis())
    running.stop(None)
    with pytest.raises(ConfigError, match="checkpoint key"):
        serve(
            LedgerServerConfig(store=tmp_path / "ledger.db", checkpoint_key=PrivateKey.generate())
        )


def test_direct_stub_with_proto_messages(env: Env) -> None:
    """What a client in another language does: raw protos, status and trailing metadata."""
    channel = grpc.insecure_channel(env.running.address)
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Append(
            ledger_pb2.AppendRequest(signed_event=encode_signed_event(env.flow.propose())),
            timeout=5,
        )
    md = dict(info.value.trailing_metadata())  # type: ignore[attr-defined]
    assert info.value.code() == CODE.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert md["steward-violation-code"] == "GENESIS_MISPLACED"
    assert md["steward-violation-field"] == "type"
    channel.close()


# --------------------------------------------------------------------------------------------
# TLS and mutual TLS


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def test_tls(tmp_path: Path, pki: Pki) -> None:
    cast = Cast.create()
    running = _start(tmp_path, cast, tls_cert=pki.server_cert, tls_key=pki.server_key)
    try:
        with LedgerClient(f"localhost:{running.port}", ca_file=pki.ca_path) as client:
            assert client.append(Flow(cast).genesis()).seq == 0
        with (
            LedgerClient(f"localhost:{running.port}", retries=0, timeout=3) as plain,
            pytest.raises(LedgerRpcError) as info,
        ):
            plain.head()
        assert info.value.code == CODE.UNAVAILABLE
    finally:
        running.stop(None)


def test_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    cast = Cast.create()
    running = _start(
        tmp_path,
        cast,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        client_ca=pki.ca_path,
        require_client_cert=True,
    )
    research_infra = pki.client("research-infra")
    try:
        with LedgerClient(
            f"localhost:{running.port}",
            ca_file=pki.ca,
            cert_file=research_infra.cert,
            key_file=research_infra.key,
        ) as client:
            assert client.append(Flow(cast).genesis()).seq == 0
        with (
            LedgerClient(
                f"localhost:{running.port}", ca_file=pki.ca, retries=0, timeout=3
            ) as anonymous,
            pytest.raises(LedgerRpcError) as info,
        ):
            anonymous.head()
        assert info.value.code == CODE.UNAVAILABLE
        assert running.ledger.head().size == 1
    finally:
        running.stop(None)


def test_mutual_tls_needs_tls() -> None:
    from ledger.errors import ConfigError

    with pytest.raises(ConfigError, match="mutual TLS needs TLS"):
        serve(
            LedgerServerConfig(
                store=":memory:", checkpoint_key=PrivateKey.generate(), require_client_cert=True
            )
        )


def test_passphrase_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cast = Cast.create()
    key_file = tmp_path / "checkpoint.pem"
    cast.checkpoint_key.save(key_file, b"correct horse")
    monkeypatch.setenv("TEST_CKPT_PASS", "correct horse")
    caplog.set_level("DEBUG")
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "l.db",
            checkpoint_key=key_file,
            checkpoint_key_passphrase_env="TEST_CKPT_PASS",
        )
    )
    try:
        with LedgerClient(running.address) as client:
            client.append(Flow(cast).genesis())
            client.checkpoint(publish_now=True)
    finally:
        running.stop(None)
    assert "correct horse" not in caplog.text
    assert "correct horse" not in repr(LedgerServerConfig(store="x", checkpoint_key=key_file))


def test_submit_builds_and_signs(env: Env) -> None:
    _base(env)
    payload = decode_body(env.flow.propose().body).payload
    receipt = env.client.submit(payload, [env.cast["agent"].key])
    assert env.client.get(receipt.seq).body.payload == payload


# --------------------------------------------------------------------------------------------
# Store failures: the core never stays ahead of the store


class FlakyStore(SQLiteLogStore):
    """Fails the next append: before writing, after writing (ambiguous), or fenced."""

    mode: str = ""

    def append(
        self, records: Sequence[tuple[bytes, bytes]], checkpoint: tuple[int, str] | None = None
    ) -> list[int]:
        mode, self.mode = self.mode, ""
        if mode == "before":
            raise StoreUnavailableError("database is locked")
        if mode == "fenced":
            raise FencedError("a newer writer holds the ledger")
        positions = super().append(records, checkpoint)
        if mode == "after":
            raise StoreUnavailableError("connection lost before the commit was confirmed")
        return positions


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[tuple[Env, FlakyStore]]:
    cast = Cast.create()
    store = FlakyStore(tmp_path / "flaky.db")
    running = serve(
        LedgerServerConfig(
            store=store,
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_entries=2,
            checkpoint_every_ms=0,
        )
    )
    client = LedgerClient(running.address, retries=0)
    try:
        yield Env(running, client, cast, Flow(cast, state=followed_state(client.read))), store
    finally:
        client.close()
        running.stop(None)
        store.close()


def test_failed_store_append_changes_nothing(flaky: tuple[Env, FlakyStore]) -> None:
    env, store = flaky
    _base(env)
    event = env.flow.propose()
    store.mode = "before"
    env.refused(event, CODE.UNAVAILABLE, "STORE_UNAVAILABLE")
    receipt = env.client.append(event)  # the retry lands at the seq the failure did not use
    assert receipt.seq == env.client.head().size - 1 and not receipt.duplicate
    assert [e.seq for e in env.client.read(0)] == list(range(receipt.seq + 1))


def test_ambiguous_store_failure_then_retry_returns_the_stored_receipt(
    flaky: tuple[Env, FlakyStore],
) -> None:
    env, store = flaky
    _base(env)
    size = env.client.head().size
    event = env.flow.propose()
    store.mode = "after"
    with pytest.raises(LedgerRpcError) as info:
        env.client.append(event)
    assert info.value.code == CODE.UNAVAILABLE
    again = env.client.append(event)  # rebuilt from the store, which did keep the entry
    assert again.duplicate and again.seq == size
    assert env.client.head().size == size + 1


def test_fenced_server_stops_appending_and_reports_not_serving(
    flaky: tuple[Env, FlakyStore],
) -> None:
    env, store = flaky
    _base(env)
    head = env.client.head()
    store.mode = "fenced"
    with pytest.raises(LedgerRpcError) as info:
        env.client.append(env.flow.propose())
    assert info.value.code == CODE.UNAVAILABLE and info.value.message.startswith("fenced:")
    with pytest.raises(LedgerRpcError) as info:
        env.client.append(env.flow.propose())  # and stays fenced
    assert info.value.violation_code == "FENCED"
    assert env.client.head() == head
    channel = grpc.insecure_channel(env.running.address)
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    channel.close()


def test_more_services_share_the_server(tmp_path: Path) -> None:
    from steward.v1 import controller_pb2, controller_pb2_grpc

    def add_controller(server: grpc.Server, _ledger: object) -> str:
        controller_pb2_grpc.add_ControllerServiceServicer_to_server(
            controller_pb2_grpc.ControllerServiceServicer(), server
        )
        return controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name

    cast = Cast.create()
    running = serve(
        LedgerServerConfig(store=tmp_path / "l.db", checkpoint_key=cast.checkpoint_key),
        add_services=[add_controller],
    )
    try:
        channel = grpc.insecure_channel(running.address)
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(
            health_pb2.HealthCheckRequest(service="steward.v1.ControllerService"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        assert "steward.v1.ControllerService" in {
            s.name for r in replies for s in r.list_services_response.service
        }
        channel.close()
    finally:
        running.stop(None)


class _HeldStore(SQLiteLogStore):
    """A real SQLite store whose next append waits for `gate` and then, if `fail`, raises."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate: threading.Event | None = None
        self.fail = False
        self.held = threading.Event()

    def append(
        self, records: Sequence[tuple[bytes, bytes]], checkpoint: tuple[int, str] | None = None
    ) -> list[int]:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.held.set()
            assert gate.wait(30), "the test never opened the gate"
            if self.fail:
                raise StoreUnavailableError("held append failed (test)")
        return super().append(records, checkpoint)


@pytest.mark.parametrize("fail", [False, True], ids=["stored", "store-fails"])
def test_append_stream_checks_the_next_batch_while_one_is_being_stored(
    tmp_path: Path, fail: bool
) -> None:
    """AppendStream does not wait for a batch's store write before checking the next batch;
    the answers still come in order, each once durable. If the held write fails, the stream
    ends with its error and no later batch of the stream is stored."""
    cast = Cast.create()
    flow = Flow(cast)
    store = _HeldStore(tmp_path / "ledger.db")
    running = serve(
        LedgerServerConfig(
            store=store,
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_ms=0,
            verify_processes=0,
        )
    )
    client = LedgerClient(running.address, timeout=10, retries=0)
    try:
        client.append(flow.genesis())
        client.append_many(flow.grants())
        client.append(flow.policy())
        proposal = client.append(flow.propose()).leaf_hash
        size = client.head().size
        batches = [
            [encode_signed_event(flow.health(proposal, j % 3)) for j in range(4)] for _ in range(3)
        ]
        gate = threading.Event()
        store.gate, store.fail = gate, fail
        sent = threading.Event()
        replies: list[object] = []

        def requests() -> Iterator[ledger_pb2.AppendBatch]:
            for i, batch in enumerate(batches):
                yield ledger_pb2.AppendBatch(signed_events=batch, batch_id=i)
                if i == 0:  # the next batches only once the first one's write is held
                    assert store.held.wait(10)
            sent.set()

        def run() -> None:
            try:
                replies.extend(client._stub.AppendStream(requests(), timeout=30))
            except grpc.RpcError as err:
                replies.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert store.held.wait(10)
        server = running.ledger

        def held_and_checked() -> tuple[int, int]:
            with server._lock:
                return (
                    sum(len(f.entries) for f in server.group_commit.writing),
                    sum(len(f.entries) for f in server.group_commit.folded),
                )

        deadline = time.monotonic() + 10
        # The first batch is at the store; the others are checked meanwhile, without waiting
        # for that write.
        while held_and_checked() != (4, 8) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert held_and_checked() == (4, 8)
        assert replies == [] and client.head().size == size  # nothing answered, nothing durable
        gate.set()
        thread.join(10)
        if not fail:
            assert [r.batch_id for r in replies] == [0, 1, 2]  # type: ignore[attr-defined]
            seqs = [r.receipt.seq for reply in replies for r in reply.results]  # type: ignore[attr-defined]
            assert seqs == list(range(size, size + 12))
            assert client.head().size == size + 12
        else:
            assert len(replies) == 1 and isinstance(replies[0], grpc.RpcError)
            assert replies[0].code() == grpc.StatusCode.UNAVAILABLE
            assert client.head().size == size
            assert sum(1 for _ in store.read(0)) == size  # no later batch went in after it
            # The ledger recovers: the same events go in at the same seqs.
            again = client.append_many([e for batch in batches for e in batch])
            assert [r.seq for r in again if isinstance(r, Receipt)] == list(range(size, size + 12))
    finally:
        client.close()
        running.stop(None)
        store.close()
