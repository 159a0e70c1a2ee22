"""Fuzz the ledger's gRPC API: garbage and mutated events through Append and AppendStream.

A real ledger server (``ledger.server.serve`` on a SQLite file, loopback port) holds a small
governance ledger. Hypothesis sends raw garbage, byte-mutated copies of events already in the
log, and structurally valid events that break the rules (wrong key, wrong ledger, taken event
id, unknown proposal). Everything mutated comes from events already appended, so nothing sent
here may append anything: the head must not move. Every refusal must carry one of the
contract's client-error codes, never INTERNAL or UNKNOWN (a server bug).

Examples per test: ``STEWARD_FUZZ_EXAMPLES`` (default 300).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.client import LedgerClient
from ledger.events import new_body, sign
from ledger.formats import (
    HealthReported,
    Metric,
    SignedEvent,
    decode_signed_event,
    encode_body,
    encode_signed_event,
)
from ledger.grpc_errors import Status
from ledger.keys import PrivateKey, sign_body
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, RunningServer, serve
from steward.v1 import ledger_pb2, ledger_pb2_grpc
from tests.helpers.mutations import mutated

EXAMPLES = int(os.environ.get("STEWARD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass
class Ledger:
    running: RunningServer
    stub: ledger_pb2_grpc.LedgerServiceStub
    client: LedgerClient
    flow: Flow
    appended: list[bytes]  # signed events already in the log (mutation seeds)
    proposal: bytes

    def head(self) -> int:
        return self.client.head().size


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-grpc")
    cast = Cast.create()
    flow = Flow(cast, ledger="fuzz", origin="steward.dev/ledger/fuzz")
    running = serve(
        LedgerServerConfig(
            store=tmp / "ledger.db", checkpoint_key=cast.checkpoint_key, checkpoint_every_ms=0
        )
    )
    channel = grpc.insecure_channel(running.address)
    client = LedgerClient(running.address, retries=0)
    try:
        events = [flow.genesis(), *flow.grants(), flow.policy(), flow.propose()]
        receipts = [client.append(e) for e in events]
        proposal = receipts[-1].leaf_hash
        more = [
            flow.eval(proposal, "safety", 0.97),
            flow.eval(proposal, "quality", 0.9),
            flow.health(proposal, 0),
            flow.kill(_scope(proposal)),
        ]
        for e in more:
            client.append(e)
        appended = [encode_signed_event(e) for e in (*events, *more)]
        yield Ledger(
            running, ledger_pb2_grpc.LedgerServiceStub(channel), client, flow, appended, proposal
        )
    finally:
        client.close()
        channel.close()
        running.stop()


def _scope(proposal: bytes) -> object:
    from ledger.formats import KillScope

    return KillScope("PROPOSAL", proposal=proposal)


# -- inputs ----------------------------------------------------------------------------------


def garbage_or_mutated(ledger: Ledger) -> st.SearchStrategy[bytes]:
    header = ledger.appended[0][:10]
    return st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=512).map(lambda b: header + b),
        mutated(ledger.appended, ops=("flip", "truncate", "insert", "delete", "splice")),
    )


def _forged(ledger: Ledger, kind: int, data: st.DataObject) -> bytes:
    """A well-formed event that breaks a rule (all would append if the rules were not checked)."""
    flow, h = ledger.flow, ledger.proposal
    payload = HealthReported(h, 0, True, (Metric("error_rate", data.draw(st.floats(0, 1))),))
    if kind == 0:  # signed by a key the ledger never granted
        return encode_signed_event(sign(new_body("fuzz", payload), PrivateKey.generate()))
    if kind == 1:  # another ledger's name
        return encode_signed_event(sign(new_body("other", payload), flow.cast["monitor"].key))
    if kind == 2:  # an event id already in the log, with other content
        taken = decode_signed_event(data.draw(st.sampled_from(ledger.appended[1:])))
        from ledger.formats import decode_body

        body = new_body("fuzz", payload, event_id=decode_body(taken.body).event_id)
        return encode_signed_event(sign(body, flow.cast["monitor"].key))
    if kind == 3:  # a proposal that does not exist
        bad = HealthReported(data.draw(st.binary(min_size=32, max_size=32)), 0, True, ())
        return encode_signed_event(sign(new_body("fuzz", bad), flow.cast["monitor"].key))
    if kind == 4:  # the right author's role is missing (an approver reporting health)
        return encode_signed_event(sign(new_body("fuzz", payload), flow.cast["alice"].key))
    if kind == 5:  # a valid signature moved onto another body
        victim = decode_signed_event(data.draw(st.sampled_from(ledger.appended)))
        body = encode_body(new_body("fuzz", payload))
        return encode_signed_event(SignedEvent(body, victim.signatures))
    # no signature at all, or too many
    body = encode_body(new_body("fuzz", payload))
    if data.draw(st.sampled_from((0, 17))) == 0:
        return encode_signed_event(sign_body(body, []))
    # sign_body writes one signature per key (one encoding per event), so the 17 copies of the
    # monitor's are listed by hand, as an attacker would send them.
    (one,) = sign_body(body, [flow.cast["monitor"].key]).signatures
    return _raw_many(body, SignedEvent(body, (one,) * 17))


def _raw_many(body: bytes, event: SignedEvent) -> bytes:
    # encode_signed_event refuses > 16 signatures; build the Avro by hand to send it anyway.
    import io

    import fastavro

    from ledger.formats import SIGNED_EVENT_SCHEMA, SINGLE_OBJECT_MAGIC

    out = io.BytesIO()
    fastavro.schemaless_writer(
        out,
        SIGNED_EVENT_SCHEMA.parsed,
        {
            "body": body,
            "signatures": [{"key_id": s.key_id, "sig": s.sig} for s in event.signatures],
        },
    )
    return SINGLE_OBJECT_MAGIC + SIGNED_EVENT_SCHEMA.fingerprint + out.getvalue()


def _check_refusal(err: grpc.RpcError) -> None:
    status = Status.from_rpc_error(err)
    assert status.code in ALLOWED, f"{status.code.name}: {status.message}"


# -- tests -------------------------------------------------------------------------------------


def _append(ledger: Ledger, payload: bytes) -> None:
    try:
        reply = ledger.stub.Append(ledger_pb2.AppendRequest(signed_event=payload), timeout=30)
    except grpc.RpcError as err:
        _check_refusal(err)
        return
    # Accepted: only possible for the exact bytes of an event already in the log (a retry).
    assert reply.duplicate, f"garbage was appended at seq {reply.seq}"


def test_fuzz_append_garbage(ledger: Ledger) -> None:
    head = ledger.head()

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        _append(ledger, data.draw(garbage_or_mutated(ledger)))

    run()
    assert ledger.head() == head


def test_fuzz_append_rule_breaking_events(ledger: Ledger) -> None:
    head = ledger.head()

    @FUZZ
    @given(kind=st.integers(0, 6), data=st.data())
    def run(kind: int, data: st.DataObject) -> None:
        _append(ledger, _forged(ledger, kind, data))

    run()
    assert ledger.head() == head


def test_fuzz_append_stream(ledger: Ledger) -> None:
    head = ledger.head()

    @FUZZ
    @given(data=st.data(), batches=st.integers(1, 3))
    def run(data: st.DataObject, batches: int) -> None:
        def item() -> bytes:
            if data.draw(st.booleans()):
                return data.draw(garbage_or_mutated(ledger))
            return _forged(ledger, data.draw(st.integers(0, 6)), data)

        requests = [
            ledger_pb2.AppendBatch(
                batch_id=i, signed_events=[item() for _ in range(data.draw(st.integers(0, 8)))]
            )
            for i in range(batches)
        ]
        try:
            for reply in ledger.stub.AppendStream(iter(requests), timeout=60):
                for r in reply.results:
                    if r.HasField("receipt"):
                        assert r.receipt.duplicate, f"garbage appended at seq {r.receipt.seq}"
                    else:
                        status = Status.from_detail(r.error)
                        assert status.code in ALLOWED, f"{status.code.name}: {status.message}"
        except grpc.RpcError as err:
            _check_refusal(err)

    run()
    assert ledger.head() == head


def test_oversized_batch_is_refused_whole(ledger: Ledger) -> None:
    head = ledger.head()
    batch = ledger_pb2.AppendBatch(batch_id=0, signed_events=[b"x"] * 1025)
    with pytest.raises(grpc.RpcError) as info:
        list(ledger.stub.AppendStream(iter([batch]), timeout=30))
    assert Status.from_rpc_error(info.value).code == grpc.StatusCode.INVALID_ARGUMENT
    assert ledger.head() == head


def test_exact_retry_of_every_appended_event_is_a_duplicate(ledger: Ledger) -> None:
    head = ledger.head()
    for payload in ledger.appended:
        reply = ledger.stub.Append(ledger_pb2.AppendRequest(signed_event=payload), timeout=30)
        assert reply.duplicate
    assert ledger.head() == head
