"""`kubectl steward` rendering and argument handling, from fake data (no cluster, no ledger)."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.kubectl import render, rows, sources
from controller.kubectl.main import build_parser, main
from controller.state import ControllerState
from controller.view import rollout_views
from ledger.formats import KillScope
from steward.v1 import controller_pb2
from tests.unit.harness import Harness

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
HEX = "3fa2c1d4e5" + "0" * 54


def ago(seconds: int) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


INFO = rows.RolloutInfo(
    name="model-server-3fa2c1d4e5",
    namespace="models",
    deployment="model-server",
    proposal=HEX,
    phase="Progressing",
    step=1,
    weight=50,
    approvals=("human:alice@example.org", "human:bob@example.org"),
    approval_count=2,
    approvals_required=2,
    steps=3,
    candidate_image="registry.example/m:v2",
    stable_image="registry.example/m:v1",
    message="holding step 1 for 3.0s more",
    last_seq=41,
    source="ledger",
    created=ago(300),
)

CLUSTER = rows.ClusterView(
    deployments=[
        rows.DeploymentRow(
            "model-server-canary", "canary", 2, 1, 2, 1, "registry.example/m:v2", ago(120)
        ),
        rows.DeploymentRow(
            "model-server", "stable", 2, 2, 2, 2, "registry.example/m:v1", ago(7200)
        ),
    ],
    replicasets=[
        rows.ReplicaSetRow(
            "model-server-6d4cf", "model-server", "1", 2, 2, "registry.example/m:v1", ago(7200)
        ),
        rows.ReplicaSetRow(
            "model-server-old", "model-server", "0", 0, 0, "registry.example/m:v0", ago(9000)
        ),
        rows.ReplicaSetRow(
            "model-server-canary-7f9",
            "model-server-canary",
            "1",
            2,
            1,
            "registry.example/m:v2",
            ago(120),
        ),
    ],
    pods=[
        rows.PodRow(
            "model-server-6d4cf-aaaaa",
            "model-server-6d4cf",
            "Running",
            True,
            1,
            1,
            created=ago(7200),
        ),
        rows.PodRow(
            "model-server-6d4cf-bbbbb",
            "model-server-6d4cf",
            "Running",
            True,
            1,
            1,
            created=ago(7100),
        ),
        rows.PodRow(
            "model-server-canary-7f9-ccccc",
            "model-server-canary-7f9",
            "Running",
            True,
            1,
            1,
            created=ago(100),
        ),
        rows.PodRow(
            "model-server-canary-7f9-ddddd",
            "model-server-canary-7f9",
            "Running",
            False,
            0,
            1,
            restarts=3,
            reason="CrashLoopBackOff",
            created=ago(60),
        ),
    ],
)


def test_header_shows_status_step_weight_images_replicas_and_approvers() -> None:
    lines = render.render_header(INFO, CLUSTER)
    assert lines[0] == "Name:         model-server-3fa2c1d4e5"
    assert [line for line in lines if line[14] == " "] == []  # every value starts in one column
    expected = {
        "Status:": "◌ Progressing",
        "Message:": "holding step 1 for 3.0s more",
        "Step:": "1/3",
        "SetWeight:": "50%",
        "ActualWeight:": "33%",  # 1 ready canary of 3 ready pods
        "Images:": "registry.example/m:v1 (stable)",
        "": "registry.example/m:v2 (canary)",
        "Replicas:": "3/4 ready (stable 2/2, canary 1/2)",
        "Approvals:": "2/2 (human:alice@example.org, human:bob@example.org)",
        "Kill switch:": "none",
        "Last seq:": "41",
        "Proposal:": HEX,
    }
    got = {line[:14].strip(): line[14:] for line in lines}
    for key, value in expected.items():
        assert got.get(key) == value, f"{key!r}: {got.get(key)!r}"


def test_tree_nests_deployments_replicasets_and_pods_like_argo() -> None:
    lines = render.render_tree(render.build_tree(INFO, CLUSTER, NOW))
    kind_at = lines[0].index("KIND")
    names = [line[:kind_at].rstrip() for line in lines]
    assert names == [
        "NAME",
        "⟳ model-server-3fa2c1d4e5",
        "├──◫ model-server",
        "│  └──⧉ model-server-6d4cf",  # the scaled-down old ReplicaSet is hidden
        "│     ├──□ model-server-6d4cf-aaaaa",
        "│     └──□ model-server-6d4cf-bbbbb",
        "└──◫ model-server-canary",
        "   └──⧉ model-server-canary-7f9",
        "      ├──□ model-server-canary-7f9-ccccc",
        "      └──□ model-server-canary-7f9-ddddd",
    ]
    assert lines[0].split() == ["NAME", "KIND", "STATUS", "AGE", "INFO"]
    assert (
        "ModelRollout  ◌ Progressing" in lines[1]
        and "5m" in lines[1]
        and "step 1/3, weight 50%" in lines[1]
    )
    assert "Deployment" in lines[2] and "✔ Healthy" in lines[2] and "stable, 2/2 ready" in lines[2]
    assert "◌ Progressing" in lines[6] and "canary, 1/2 ready" in lines[6]
    assert "rev:1, registry.example/m:v1" in lines[3]
    assert "✖ CrashLoopBackOff" in lines[9] and "ready:0/1, restarts:3" in lines[9]
    # Columns line up: every KIND starts where the header's does.
    assert {line[kind_at:].split()[0] for line in lines[1:]} == {
        "ModelRollout",
        "Deployment",
        "ReplicaSet",
        "Pod",
    }


def test_a_revision_annotation_that_is_no_number_sorts_last_and_prints_escaped() -> None:
    """Anyone who may edit a ReplicaSet writes its revision: "²" is a digit to str.isdigit(),
    which int() refuses; `get` used to end with a ValueError."""
    import dataclasses

    hostile = rows.ReplicaSetRow(
        "model-server-x", "model-server", "²", 1, 1, "registry.example/m:v1", ago(60)
    )
    cluster = dataclasses.replace(CLUSTER, replicasets=[hostile, *CLUSTER.replicasets])
    lines = render.render_tree(render.build_tree(INFO, cluster, NOW))
    kind_at = lines[0].index("KIND")
    names = [line[:kind_at].rstrip() for line in lines]
    assert names[2:5] == [
        "├──◫ model-server",
        "│  ├──⧉ model-server-6d4cf",
        "│  │  ├──□ model-server-6d4cf-aaaaa",
    ]
    assert any("model-server-x" in n for n in names)
    assert render._revision("12") == 12 and render._revision("²") == 0 and render._revision("") == 0


def test_traffic_mode_header_shows_set_and_actual_weight_per_service_of_the_route() -> None:
    """As `kubectl argo rollouts get` does: the weight the step sets, and what the route gives
    now (here a hand edit the controller has not yet corrected: 80 against a set 50)."""
    import dataclasses

    route = rows.RouteRow(
        "model-server",
        (("model-server-stable", "stable", 20), ("model-server-canary", "canary", 80)),
    )
    lines = render.render_header(INFO, dataclasses.replace(CLUSTER, routes=[route]))
    fields = {line[:14].strip(): line[14:] for line in lines}
    assert fields["SetWeight:"] == "50%"
    assert fields["ActualWeight:"] == "80%"  # the route's share, not the pods' (33%)
    assert fields["Traffic:"] == (
        "HTTPRoute model-server: Service model-server-stable (stable) 20, "
        "Service model-server-canary (canary) 80"
    )
    # A route with no weight at all (every backend 0) has no actual weight to show.
    empty = rows.RouteRow("r", (("model-server-stable", "stable", 0),))
    text = "\n".join(render.render_header(INFO, dataclasses.replace(CLUSTER, routes=[empty])))
    assert "ActualWeight" not in text and "HTTPRoute r: Service model-server-stable" in text


def test_without_a_cluster_the_header_says_why() -> None:
    text = render.render_get(
        INFO, rows.ClusterView(error="no kubeconfig (pass --kubeconfig or set KUBECONFIG)"), NOW
    )
    assert "Cluster:" in text and "no kubeconfig" in text
    assert "ActualWeight" not in text and "Replicas:" not in text
    assert text.splitlines()[-1].startswith("⟳ model-server-3fa2c1d4e5")


def _tool_on_a_cluster(monkeypatch: pytest.MonkeyPatch, read: object) -> sources.Tool:
    """A Tool whose cluster reads go to `read` (in place of read_cluster's API calls)."""
    tool = sources.Tool(build_parser().parse_args(["get", INFO.name]))
    tool._kube, tool._kube_loaded = object(), True  # type: ignore[assignment]
    monkeypatch.setattr(sources, "read_cluster", read)
    return tool


def test_get_when_the_api_answers_404_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes.client import ApiException

    def not_found(api: object, namespace: str, deployment: str) -> rows.ClusterView:
        raise ApiException(status=404, reason="Not Found")

    info, view = _tool_on_a_cluster(monkeypatch, not_found).cluster(INFO)
    assert info == INFO
    assert "models/model-server" in view.error and "not found" in view.error
    text = render.render_get(info, view, NOW)
    assert "Cluster:" in text and "models/model-server" in text


def test_get_when_the_target_deployment_does_not_exist_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_stable(api: object, namespace: str, deployment: str) -> rows.ClusterView:
        return rows.ClusterView()  # the namespace lists no Deployment of that name

    _, view = _tool_on_a_cluster(monkeypatch, no_stable).cluster(INFO)
    assert view.error == "Deployment models/model-server not found"
    _, present = _tool_on_a_cluster(monkeypatch, lambda *_: CLUSTER).cluster(INFO)
    assert present.error == "" and present.deployments == CLUSTER.deployments


def test_list_table() -> None:
    other = rows.RolloutInfo(
        name="ranker-0011223344",
        namespace="search",
        deployment="ranker",
        proposal="0011223344" + "f" * 54,
        phase="Killed",
        step=0,
        weight=0,
        approval_count=1,
        candidate_image="registry.example/r:v9",
    )
    out = render.render_list([INFO, other], all_namespaces=True).splitlines()
    assert out[0].split() == [
        "NAMESPACE",
        "NAME",
        "PROPOSAL",
        "TARGET",
        "STATUS",
        "STEP",
        "WEIGHT",
        "APPROVALS",
        "CANDIDATE",
    ]
    assert out[1].split() == [
        "models",
        "model-server-3fa2c1d4e5",
        HEX[:12],
        "model-server",
        "Progressing",
        "1/3",
        "50%",
        "2/2",
        "registry.example/m:v2",
    ]
    assert out[2].split() == [
        "search",
        "ranker-0011223344",
        "0011223344ff",
        "ranker",
        "Killed",
        "0",
        "0%",
        "1",
        "registry.example/r:v9",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5s"), (59, "59s"), (61, "1m"), (7200, "2h"), (200000, "2d")]
)
def test_age(seconds: int, text: str) -> None:
    assert render.age(ago(seconds), NOW) == text


def test_display_phase_from_the_controller_message() -> None:
    assert rows.display_phase("STARTED", False) == "Progressing"
    assert rows.display_phase("ROLLED_BACK", False, "unhealthy report") == "RolledBack"
    assert rows.display_phase("ROLLED_BACK", True) == "Killed"
    assert rows.display_phase("ROLLED_BACK", False, "kill switch TARGET since seq 9") == "Killed"
    m = controller_pb2.Rollout(
        proposal=bytes.fromhex(HEX),
        namespace="models",
        deployment="model-server",
        phase="PROMOTED",
        step=2,
        weight=100,
        approvals=["human:a"],
        approvals_required=2,
    )
    info = sources.from_message(m)
    assert (info.name, info.phase, info.approval_count, info.source) == (
        "model-server-3fa2c1d4e5",
        "Promoted",
        1,
        "controller",
    )


def test_from_a_modelrollout_object() -> None:
    obj = {
        "metadata": {
            "name": "model-server-3fa2c1d4e5",
            "namespace": "models",
            "creationTimestamp": "2026-01-01T11:55:00Z",
        },
        "spec": {
            "proposal": HEX,
            "target": "model-server",
            "candidateImage": "registry.example/m:v2",
        },
        "status": {
            "phase": "Killed",
            "step": 1,
            "weight": 0,
            "approvals": 2,
            "lastSeq": 50,
            "message": "kill switch TARGET since seq 50",
        },
    }
    info = sources.from_object(obj)
    assert (info.proposal, info.phase, info.approval_count, info.last_seq, info.kill_switch) == (
        HEX,
        "Killed",
        2,
        50,
        "engaged",
    )
    assert render.age(info.created, NOW) == "5m"


def test_history_keeps_the_proposals_story_and_kills_in_scope() -> None:
    h = Harness()
    p, _ = h.approved()
    other = h.ok(h.flow.propose(deployment="other"))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.kill(KillScope("TARGET", "models", "other")))  # another target: not in the story
    h.ok(h.flow.kill(KillScope("TARGET", "models", "model-server")))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK", reason="kill switch"))
    entries = list(h.core.entries)
    lines = render.history_lines(entries, p, "models", "model-server")
    kinds = [line.split()[3] for line in lines]
    assert kinds == [
        "ProposalSubmitted",
        "EvalRecorded",
        "EvalRecorded",
        "ApprovalRecorded",
        "ApprovalRecorded",
        "RolloutStep",
        "KillSwitchEngaged",
        "RolloutStep",
    ]
    assert "proposed registry.example/model-server:v2" in lines[0]
    assert "human:alice@example.org approved" in lines[3]
    assert "KILL SWITCH engaged (target models/model-server)" in lines[6]
    assert other.hex()[:12] not in "\n".join(lines)

    # The same log through the controller's fold gives the rollout the header shows.
    cs = ControllerState()
    for e in entries:
        assert cs.fold(e) is None
    (view, _) = rollout_views(cs, {})
    info = sources.from_view(view, 3)
    assert (info.phase, info.weight, info.approvals_required, info.stable_image) == (
        "Killed",
        0,
        2,
        "registry.example/model-server:v1",
    )


def test_parser_flags_before_or_after_the_command() -> None:
    parser = build_parser()
    a = parser.parse_args(["-n", "models", "--server", "h:1", "get", "abc123", "-w"])
    assert (a.namespace, a.server, a.rollout, a.watch, a.request_timeout) == (
        "models",
        "h:1",
        "abc123",
        True,
        10.0,
    )
    b = parser.parse_args(["get", "abc123", "-n", "models", "--controller", "c:2"])
    assert (b.namespace, b.controller, b.server) == ("models", "c:2", None)
    c = parser.parse_args(["release", "--target", "models/m", "--key", "a.pem", "--key", "b.pem"])
    assert (c.target, c.key, c.rollout) == ("models/m", ["a.pem", "b.pem"], None)


def test_kill_needs_exactly_one_scope(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kill", "--all", "--target", "models/m", "--reason", "x", "--key", "k.pem"]) == 2
    assert "choose exactly one of ROLLOUT, --all or --target" in capsys.readouterr().err
    assert main(["kill", "--all", "--reason", "x", "--key", "k.pem"]) == 2  # no ledger to submit to
    assert "STEWARD_SERVER" in capsys.readouterr().err


def test_verify_without_a_trust_root_prints_the_audit_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["verify", "--server", "127.0.0.1:7443"]) == 2
    err = capsys.readouterr().err
    assert "steward-audit verify --grpc 127.0.0.1:7443 --trust-root TRUST_ROOT.json" in err


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "kubectl steward approve 3fa2c1 --key alice.pem" in out and "STEWARD_CONTROLLER" in out


def test_pause_resume_abort_retry_teach_and_check_their_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = build_parser().format_help()
    for command in ("pause", "resume", "abort", "retry"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["resume", "--help"])
    helped = capsys.readouterr().out
    assert "resume_approvals" in helped and "steward sign resume.evt" in helped
    with pytest.raises(SystemExit):  # a pause says why
        main(["pause", "3fa2c1", "--key", "oncall.pem"])
    assert "--reason" in capsys.readouterr().err
    assert main(["resume", "3fa2c1"]) == 2
    assert "resume: give --key FILE" in capsys.readouterr().err
    assert main(["retry", "3fa2c1"]) == 2
    assert "retry: give --key FILE" in capsys.readouterr().err


def test_retry_applies_only_to_a_rolled_back_rollout() -> None:
    from ledger.cli.rollout import retry_problem

    h = Harness()
    p, _ = h.approved()
    state = h.core.state
    assert "use approve" in (retry_problem(state, state.proposals[p]) or "")
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.pause(p))
    running = retry_problem(state, state.proposals[p]) or ""
    assert "STARTED, not rolled back" in running and "resume" in running
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=p)))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    assert retry_problem(state, state.proposals[p]) is None
