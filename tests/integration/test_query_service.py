"""QueryService over a real gRPC server on a loopback port, reading projections of a real log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from ledger.grpc_errors import Status
from ledger.projections import Projector
from ledger.scenario import Cast
from ledger.store.sqlite import SQLiteLogStore, sqlite_engine
from steward.v1 import common_pb2, query_pb2, query_pb2_grpc
from tests.helpers.query_server import query_service
from tests.unit.harness import Harness
from tests.unit.test_projections import Story, records, story


@dataclass
class Service:
    stub: query_pb2_grpc.QueryServiceStub
    store: SQLiteLogStore
    projector: Projector
    story: Story


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    store = SQLiteLogStore(tmp_path / "ledger.db")
    engine = sqlite_engine(store.path)
    st = story()
    store.append(records(st.entries))
    projector = Projector(store, engine)
    projector.catch_up()
    try:
        with query_service(engine, max_workers=4) as stub:
            yield Service(stub, store, projector, st)
    finally:
        engine.dispose()
        store.close()


def refused(call: Callable[[Any], Any], request: Any) -> Status:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return Status.from_rpc_error(info.value)  # type: ignore[arg-type]


def page(size: int, token: str = "") -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=size, page_token=token)


# -------------------------------------------------------------------------------------- reads


def test_status_matches_the_log(service: Service) -> None:
    status = service.stub.GetProjectionStatus(query_pb2.GetProjectionStatusRequest(), timeout=10)
    last = service.story.entries[-1]
    assert (status.size, status.last_hash, status.invalid_records) == (
        last.seq + 1,
        last.leaf_hash,
        0,
    )


def test_list_proposals_with_filters(service: Service) -> None:
    h = service.story.h
    stub = service.stub
    everything = stub.ListProposals(query_pb2.ListProposalsRequest(), timeout=10)
    assert [p.hash for p in everything.proposals] == [h["p1"], h["p2"]]
    assert everything.page.next_page_token == ""
    assert everything.projection.size == len(service.story.entries)
    ranker = stub.ListProposals(query_pb2.ListProposalsRequest(deployment="ranker"), timeout=10)
    assert [p.hash for p in ranker.proposals] == [h["p2"]]
    assert not ranker.proposals[0].HasField("step")
    promoted = stub.ListProposals(query_pb2.ListProposalsRequest(phase="promoted"), timeout=10)
    assert [(p.hash, p.step, p.weight) for p in promoted.proposals] == [(h["p1"], 2, 100)]
    by_other = stub.ListProposals(
        query_pb2.ListProposalsRequest(proposer="human:alice@example.org"), timeout=10
    )
    assert list(by_other.proposals) == []
    both = stub.ListProposals(
        query_pb2.ListProposalsRequest(namespace="models", proposer="agent:researcher-7"),
        timeout=10,
    )
    assert len(both.proposals) == 2


def test_get_proposal_by_hex_and_bytes(service: Service) -> None:
    h = service.story.h
    by_hex = service.stub.GetProposal(
        query_pb2.GetProposalRequest(hash_hex=h["p2"].hex().upper()), timeout=10
    )
    by_bytes = service.stub.GetProposal(query_pb2.GetProposalRequest(hash=h["p2"]), timeout=10)
    assert by_hex == by_bytes
    assert by_hex.proposal.candidate_image == "registry.example/model-server:v3"
    assert {e.hash for e in by_hex.latest_evals} == {h["s2"], h["q2b"]}
    assert [(a.hash, a.valid_now) for a in by_hex.approvals] == [(h["a2"], False), (h["r2"], False)]
    assert by_hex.approvals_required == 2 and list(by_hex.valid_approvers) == []
    p1 = service.stub.GetProposal(query_pb2.GetProposalRequest(hash=h["p1"]), timeout=10)
    assert list(p1.valid_approvers) == ["human:alice@example.org", "human:bob@example.org"]
    assert [s.phase for s in p1.steps] == ["STARTED", "ADVANCED", "ADVANCED", "PROMOTED"]
    assert p1.steps[0].stable_replicas == 4


def test_evals_and_approvals(service: Service) -> None:
    h = service.story.h
    stub = service.stub
    evals = stub.ListEvals(query_pb2.ListEvalsRequest(proposal_hash=h["p2"]), timeout=10)
    assert [(e.hash, e.is_latest, e.passed) for e in evals.evals] == [
        (h["s2"], True, True),
        (h["q2"], False, True),
        (h["q2b"], True, False),
    ]
    assert evals.evals[2].failures and evals.evals[2].metrics[0].name == "accuracy"
    latest = stub.ListEvals(
        query_pb2.ListEvalsRequest(proposal_hex=h["p2"].hex(), latest_only=True), timeout=10
    )
    assert [e.hash for e in latest.evals] == [h["s2"], h["q2b"]]
    quality = stub.ListEvals(query_pb2.ListEvalsRequest(suite="quality"), timeout=10)
    assert [e.hash for e in quality.evals] == [h["q1"], h["q2"], h["q2b"]]
    valid = stub.ListApprovals(query_pb2.ListApprovalsRequest(valid_only=True), timeout=10)
    assert [a.hash for a in valid.approvals] == [h["a1"], h["b1"]]
    alice = stub.ListApprovals(
        query_pb2.ListApprovalsRequest(approver="human:alice@example.org"), timeout=10
    )
    assert [(a.hash, a.valid_now) for a in alice.approvals] == [(h["a1"], True), (h["a2"], False)]
    assert list(alice.approvals[0].evals) == [h["s1"], h["q1"]]


def test_rollouts_and_kill_switches(service: Service) -> None:
    h = service.story.h
    stub = service.stub
    rollouts = stub.ListRollouts(query_pb2.QueryRolloutsRequest(), timeout=10)
    assert [r.proposal.hash for r in rollouts.rollouts] == [h["p1"]]
    assert [(s.step, s.weight) for s in rollouts.rollouts[0].steps] == [
        (0, 10),
        (1, 50),
        (2, 100),
        (2, 100),
    ]
    assert (
        list(
            stub.ListRollouts(query_pb2.QueryRolloutsRequest(phase="STARTED"), timeout=10).rollouts
        )
        == []
    )
    assert (
        len(
            stub.ListRollouts(
                query_pb2.QueryRolloutsRequest(phase="PROMOTED", namespace="models"), timeout=10
            ).rollouts
        )
        == 1
    )
    everything = stub.ListKillSwitches(query_pb2.ListKillSwitchesRequest(), timeout=10)
    (kill,) = everything.kill_switches
    assert (kill.scope_kind, kill.deployment, kill.active, kill.engaged_by) == (
        "TARGET",
        "model-server",
        False,
        "human:oncall@example.org",
    )
    assert kill.HasField("released_seq") and list(kill.released_by) == [
        "human:alice@example.org",
        "human:bob@example.org",
    ]
    assert (
        list(
            stub.ListKillSwitches(
                query_pb2.ListKillSwitchesRequest(active_only=True), timeout=10
            ).kill_switches
        )
        == []
    )


def test_keys_by_role_principal_and_revocation(service: Service) -> None:
    stub = service.stub
    live = stub.ListKeys(query_pb2.ListKeysRequest(), timeout=10).keys
    assert len(live) == 10 and all(not k.HasField("revoked_seq") for k in live)
    every = stub.ListKeys(query_pb2.ListKeysRequest(include_revoked=True), timeout=10).keys
    assert len(every) == 11
    approvers = stub.ListKeys(query_pb2.ListKeysRequest(role="approver"), timeout=10).keys
    cast = service.story.cast.actors.values()
    assert sorted(k.principal for k in approvers) == sorted(
        a.principal for a in cast if "approver" in a.roles
    )
    carol = next(k for k in approvers if k.principal == "human:carol@example.org")
    assert list(carol.roles) == ["approver", "operator"]
    operators = stub.ListKeys(query_pb2.ListKeysRequest(role="operator"), timeout=10).keys
    assert list(operators) == [carol]  # oncall's operator key is revoked
    oncall = stub.ListKeys(
        query_pb2.ListKeysRequest(principal="human:oncall@example.org", include_revoked=True),
        timeout=10,
    ).keys
    assert (
        len(oncall) == 1
        and oncall[0].HasField("revoked_seq")
        and oncall[0].revoke_reason == "rotated"
    )
    roots = stub.ListKeys(query_pb2.ListKeysRequest(role="root"), timeout=10).keys
    assert len(roots) == 3 and {k.granted_seq for k in roots} == {0}


# -------------------------------------------------------------------------------------- paging


def collect(fetch: Callable[[str], Any], items: str) -> list[Any]:
    out: list[Any] = []
    token = ""
    for _ in range(100):
        response = fetch(token)
        out.extend(getattr(response, items))
        token = response.page.next_page_token
        if not token:
            return out
    raise AssertionError("paging did not end")


def test_paging_keys_with_equal_seqs(service: Service) -> None:
    """The three roots share granted seq 0: the key id breaks the tie, nothing repeats or drops."""
    stub = service.stub
    full = stub.ListKeys(query_pb2.ListKeysRequest(include_revoked=True), timeout=10).keys
    for size in (1, 2, 3, 4):
        paged = collect(
            lambda t, s=size: stub.ListKeys(
                query_pb2.ListKeysRequest(include_revoked=True, page=page(s, t)), timeout=10
            ),
            "keys",
        )
        assert paged == list(full)
    first = stub.ListKeys(query_pb2.ListKeysRequest(page=page(2)), timeout=10)
    assert len(first.keys) == 2 and first.page.next_page_token


def test_paging_is_stable_while_the_log_grows(tmp_path: Path) -> None:
    t = Harness(cast=Cast.create(seed="query-paging"))
    t.base()
    hashes = [
        t.ok(t.flow.propose(f"registry.example/m:v{i}", deployment=f"d{i}")) for i in range(3)
    ]
    assert t.core.entries is not None
    store = SQLiteLogStore(tmp_path / "ledger.db")
    engine = sqlite_engine(store.path)
    store.append(records(t.core.entries))
    projector = Projector(store, engine)
    projector.catch_up()
    try:
        with query_service(engine) as stub:
            first = stub.ListProposals(query_pb2.ListProposalsRequest(page=page(2)), timeout=10)
            assert [p.hash for p in first.proposals] == hashes[:2]
            # Two more proposals land between the pages.
            seen = len(t.core.entries)
            hashes += [
                t.ok(t.flow.propose(f"registry.example/m:v{i}", deployment=f"d{i}")) for i in (3, 4)
            ]
            store.append(records(t.core.entries[seen:]))
            projector.catch_up()
            rest = collect(
                lambda tok: stub.ListProposals(
                    query_pb2.ListProposalsRequest(page=page(2, tok or first.page.next_page_token)),
                    timeout=10,
                ),
                "proposals",
            )
            assert [p.hash for p in first.proposals] + [p.hash for p in rest] == hashes
    finally:
        engine.dispose()
        store.close()


def test_empty_projection_answers(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with query_service(engine) as stub:
            response = stub.ListProposals(query_pb2.ListProposalsRequest(), timeout=10)
            assert list(response.proposals) == [] and response.projection.size == 0
            assert response.projection.last_hash == bytes(32)
    finally:
        engine.dispose()


# -------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("ListProposals", query_pb2.ListProposalsRequest(phase="BOGUS"), "phase"),
        ("ListProposals", query_pb2.ListProposalsRequest(namespace="not a name!"), "namespace"),
        ("ListProposals", query_pb2.ListProposalsRequest(deployment="x" * 300), "deployment"),
        ("ListProposals", query_pb2.ListProposalsRequest(proposer="nobody"), "proposer"),
        ("GetProposal", query_pb2.GetProposalRequest(), "proposal"),
        ("GetProposal", query_pb2.GetProposalRequest(hash_hex="zz" * 32), "hash_hex"),
        ("GetProposal", query_pb2.GetProposalRequest(hash_hex="ab" * 16), "hash_hex"),
        ("GetProposal", query_pb2.GetProposalRequest(hash=b"\x01" * 31), "hash"),
        ("ListEvals", query_pb2.ListEvalsRequest(proposal_hash=b"short"), "proposal_hash"),
        ("ListApprovals", query_pb2.ListApprovalsRequest(approver="alice"), "approver"),
        ("ListRollouts", query_pb2.QueryRolloutsRequest(phase="PENDING"), "phase"),
        ("ListKeys", query_pb2.ListKeysRequest(role="king"), "role"),
        ("ListKeys", query_pb2.ListKeysRequest(principal="human:"), "principal"),
        ("ListKeys", query_pb2.ListKeysRequest(page=page(5, "not-a-token")), "page.page_token"),
        (
            "ListKillSwitches",
            query_pb2.ListKillSwitchesRequest(page=page(5, "e30")),
            "page.page_token",
        ),
    ],
)
def test_invalid_arguments_name_the_field(
    service: Service, method: str, request_: Any, field: str
) -> None:
    status = refused(getattr(service.stub, method), request_)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT, status
    assert status.field == field
    assert status.message.startswith(f"{field}:")


def test_page_token_bound_to_its_filters(service: Service) -> None:
    stub = service.stub
    first = stub.ListKeys(query_pb2.ListKeysRequest(include_revoked=True, page=page(2)), timeout=10)
    token = first.page.next_page_token
    status = refused(
        stub.ListKeys, query_pb2.ListKeysRequest(include_revoked=False, page=page(2, token))
    )
    assert (status.code, status.field, status.violation_code) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "page.page_token",
        "INVALID_PAGE_TOKEN",
    )
    # Another method's token is refused too.
    status = refused(stub.ListEvals, query_pb2.ListEvalsRequest(page=page(2, token)))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_proposal_is_not_found(service: Service) -> None:
    unknown = bytes(range(32))
    for call, request in [
        (service.stub.GetProposal, query_pb2.GetProposalRequest(hash=unknown)),
        (
            service.stub.GetProposal,
            query_pb2.GetProposalRequest(hash_hex=service.story.h["s1"].hex()),
        ),  # an eval
        (service.stub.ListEvals, query_pb2.ListEvalsRequest(proposal_hash=unknown)),
        (service.stub.ListApprovals, query_pb2.ListApprovalsRequest(proposal_hex=unknown.hex())),
    ]:
        status = refused(call, request)
        assert status.code == grpc.StatusCode.NOT_FOUND, status
        assert status.violation_code == "PROPOSAL_NOT_FOUND"


def test_page_size_zero_defaults_and_huge_is_capped(service: Service) -> None:
    response = service.stub.ListKeys(query_pb2.ListKeysRequest(page=page(0)), timeout=10)
    assert len(response.keys) == 10 and not response.page.next_page_token
    response = service.stub.ListKeys(query_pb2.ListKeysRequest(page=page(10**9)), timeout=10)
    assert len(response.keys) == 10
