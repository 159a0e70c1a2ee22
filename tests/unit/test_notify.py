"""Webhook delivery without a cluster: URL redaction, backoff, positions across a restart,
retries then a dead letter, against a real HTTP server on loopback."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from controller.main import build_parser, check_notify_args, notify_state_path
from controller.notices import Notice, RolloutRef
from controller.notify import (
    CLOUDEVENTS_CONTENT_TYPE,
    DeadLetters,
    Notifier,
    Position,
    PositionFile,
    RetryPolicy,
    WebhookOutlet,
    backoff_delays,
    check_sink_url,
    redact,
    sink_key,
)
from infra.processes import wait_for
from tests.helpers.http_sink import HttpSink

SECRET_URL = "https://robot:hunter2@hooks.example.com/services/T0K3N?sig=s3cr3t"
REF = RolloutRef(b"\x07" * 32, "models", "model-server")


def notice(seq: int) -> Notice:
    return Notice(
        seq=seq,
        entry_hash=seq.to_bytes(32, "big"),
        type="dev.steward.rollout.step",
        reason="StepAdvanced",
        warning=False,
        time_ms=1_767_225_600_000 + seq,
        rollouts=(REF,),
        message=f"step {seq}",
        step=seq,
        weight=10,
        phase="ADVANCED",
    )


def source() -> tuple[str, str]:
    return "steward.dev/ledger/test", "test"


def test_redaction_keeps_scheme_host_port_and_drops_every_secret() -> None:
    shown = redact(SECRET_URL)
    assert shown.startswith("https://hooks.example.com/… (sink-")
    for secret in ("robot", "hunter2", "T0K3N", "s3cr3t", "services"):
        assert secret not in shown
    assert (
        redact("http://127.0.0.1:8080/")
        == f"http://127.0.0.1:8080 ({sink_key('http://127.0.0.1:8080/')})"
    )
    assert sink_key(SECRET_URL) != sink_key(SECRET_URL + "x")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://h/x", "scheme must be http or https"),
        ("http:///nohost", "no host"),
        ("https://h/" + "a" * 2100, "longer than 2048"),
    ],
)
def test_bad_sink_urls_are_refused_naming_the_reason(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_sink_url(url)


def test_backoff_doubles_and_is_capped() -> None:
    assert backoff_delays(1, 0.5) == []
    assert backoff_delays(5, 0.5) == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delays(4, 20, cap=30) == [20, 30, 30]


def test_flags_teach_and_refuse_what_cannot_work() -> None:
    args = build_parser().parse_args(
        [
            *("--ledger", "l:1", "--key", "k", "--namespace", "n"),
            *("--notify-url", "http://a/x", "--notify-url", "https://b/y"),
            *("--notify-attempts", "0"),
        ]
    )
    assert args.notify_url == ["http://a/x", "https://b/y"]
    with pytest.raises(ValueError, match="--notify-attempts 0"):
        check_notify_args(args)
    assert notify_state_path(None, "/var/lib/steward/snapshots.db") == (
        "/var/lib/steward/snapshots.db.notify.json"
    )
    assert notify_state_path(None, "postgresql://db/x") is None
    assert notify_state_path("n.json", "s.db") == "n.json"
    text = " ".join(build_parser().format_help().split())
    assert "--notify-url" in text and "at-least" in text and "dead" in text


def test_positions_survive_a_restart_and_skip_what_was_delivered(tmp_path: Path) -> None:
    path = tmp_path / "notify.json"
    pos = PositionFile(path)
    assert pos.start is None and pos.get("sink-x") is None
    pos.set_start(Position(4, 4))
    pos.advance("sink-x", Position(9, 12))
    pos.advance("sink-x", Position(7, 10))  # never backwards
    again = PositionFile(path)
    assert again.get("sink-x") == Position(9, 12)
    assert again.get("sink-new") == Position(4, 4)  # the start, for a sink never delivered to
    assert again.low(["sink-x", "sink-new"]) == Position(4, 4)
    again.prune(["sink-new"])
    assert PositionFile(path).positions == {}


def test_delivery_in_order_once_each_and_not_again_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "notify.json"
    with HttpSink() as sink:
        for run, seqs in enumerate(([5, 6, 7], [5, 6, 7, 8])):
            pos = PositionFile(path)
            n = Notifier([WebhookOutlet(sink.url, source, 2.0)], pos, DeadLetters(None))
            n.arm(Position(4, 4))
            for s in seqs:
                n.offer(notice(s), s)
            want = 3 + run
            wait_for(f"run {run} delivered", lambda: len(sink.events()) >= want, 10)  # noqa: B023
            n.close()
        time.sleep(0.3)
        events = sink.events()
        assert [e["data"]["seq"] for e in events] == [5, 6, 7, 8]
        assert [e["id"] for e in events] == [(s).to_bytes(32, "big").hex() for s in (5, 6, 7, 8)]
        headers = sink.all()[0].headers
        assert headers["Content-Type"] == CLOUDEVENTS_CONTENT_TYPE


def test_a_failing_sink_is_retried_then_dead_lettered_without_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = tmp_path / "dead.jsonl"
    with HttpSink(status=500, path="/hook/T0K3N?sig=s3cr3t") as sink:
        url = sink.url.replace("http://", "http://robot:hunter2@")
        pos = PositionFile(tmp_path / "notify.json")
        n = Notifier(
            [WebhookOutlet(url, source, 2.0)],
            pos,
            DeadLetters(dead),
            retry=RetryPolicy(attempts=3, first_backoff=0.05),
        )
        n.arm(Position(0, 0))
        with caplog.at_level(logging.INFO, logger="steward.controller.notify"):
            n.offer(notice(1), 1)
            n.offer(notice(2), 2)
            wait_for(
                "two dead letters",
                lambda: dead.exists() and len(dead.read_text().splitlines()) == 2,
                10,
            )
        n.close()
        assert len(sink.all()) == 6  # 3 attempts each
        # User info in the URL is sent as HTTP Basic credentials, not in the request line.
        assert sink.all()[0].headers["Authorization"] == "Basic cm9ib3Q6aHVudGVyMg=="
        lines = [json.loads(line) for line in dead.read_text().splitlines()]
        assert [line["seq"] for line in lines] == [1, 2]
        assert lines[0]["attempts"] == 3 and lines[0]["error"] == "HTTP 500"
        assert lines[0]["event"]["id"] == notice(1).entry_hash.hex()
        # Dead-lettered counts as handled: the position moved on.
        assert PositionFile(tmp_path / "notify.json").get(sink_key(url)) == Position(2, 2)
        written = dead.read_text() + caplog.text
        for secret in ("hunter2", "robot", "T0K3N", "s3cr3t"):
            assert secret not in written


@pytest.mark.parametrize("status", [404, 302, 307])
def test_a_client_error_or_a_redirect_is_final_at_once(tmp_path: Path, status: int) -> None:
    """A redirect is never followed: the sink's owner must not steer the controller's POSTs."""
    dead = tmp_path / "dead.jsonl"
    with HttpSink(status=status) as sink:
        n = Notifier(
            [WebhookOutlet(sink.url, source, 2.0)],
            PositionFile(None),
            DeadLetters(dead),
            retry=RetryPolicy(attempts=5, first_backoff=0.05),
        )
        n.arm(Position(0, 0))
        n.offer(notice(1), 1)
        wait_for("dead letter", lambda: dead.exists(), 10)
        n.close()
        assert len(sink.all()) == 1
        assert json.loads(dead.read_text())["error"] == f"HTTP {status}"


def test_offering_never_waits_for_a_slow_sink(tmp_path: Path) -> None:
    with HttpSink(delay=2.0) as sink:
        n = Notifier([WebhookOutlet(sink.url, source, 5.0)], PositionFile(None), DeadLetters(None))
        n.arm(Position(0, 0))
        started = time.monotonic()
        for s in range(1, 6):
            n.offer(notice(s), s)
        assert time.monotonic() - started < 0.1
        wait_for("first POST in flight", lambda: sink.in_flight == 1, 5)
        n.close()


def test_nothing_is_offered_before_arming_on_a_first_start() -> None:
    with HttpSink() as sink:
        n = Notifier([WebhookOutlet(sink.url, source, 2.0)], PositionFile(None), DeadLetters(None))
        n.offer(notice(1), 1)  # catch-up of history: dropped
        n.arm(Position(1, 1))
        n.offer(notice(2), 2)
        wait_for("delivered", lambda: len(sink.events()) == 1, 10)
        n.close()
        assert [e["data"]["seq"] for e in sink.events()] == [2]


def test_only_the_leader_delivers() -> None:
    leader = False
    with HttpSink() as sink:
        n = Notifier(
            [WebhookOutlet(sink.url, source, 2.0)],
            PositionFile(None),
            DeadLetters(None),
            active=lambda: leader,
        )
        n.arm(Position(0, 0))
        n.offer(notice(1), 1)
        time.sleep(0.6)
        assert sink.all() == []
        leader = True
        wait_for("delivered once leader", lambda: len(sink.events()) == 1, 10)
        n.close()


def test_kubernetes_event_names_are_derived_from_the_entry_and_bodies_carry_the_story() -> None:
    from controller.kube_events import event_body, event_name

    n = notice(17)
    assert event_name("model-server-0123456789", n) == (
        f"model-server-0123456789.{n.entry_hash.hex()[:16]}"
    )
    assert len(event_name("x" * 300, n)) <= 253
    body = event_body(n, "ModelRollout", "steward.dev/v1alpha1", "models", "mr", "uid-1", "ctl")
    assert body["metadata"]["name"] == event_name("mr", n)
    assert body["involvedObject"]["uid"] == "uid-1"
    assert (body["reason"], body["type"]) == ("StepAdvanced", "Normal")
    assert body["message"] == "step 17 weight 10% ADVANCED (ledger seq 17): step 17"
    assert body["eventTime"].endswith(".017000Z")  # microseconds: steps ms apart stay ordered
    assert body["lastTimestamp"] == body["eventTime"][:19] + "Z"  # what kubectl describe sorts by
    assert body["reportingComponent"] == "steward.dev/controller"


def test_metrics_count_deliveries_and_dead_letters_per_sink_never_naming_the_url(
    tmp_path: Path,
) -> None:
    from prometheus_client import generate_latest

    from controller.metrics import ControllerMetrics

    with HttpSink() as ok, HttpSink(status=500, path="/x?token=s3cr3t") as failing:
        n = Notifier(
            [WebhookOutlet(ok.url, source, 2.0), WebhookOutlet(failing.url, source, 2.0)],
            PositionFile(None),
            DeadLetters(None),
            retry=RetryPolicy(attempts=2, first_backoff=0.01),
        )
        n.arm(Position(0, 0))
        n.offer(notice(1), 1)
        n.offer(notice(2), 2)
        wait_for(
            "both handled", lambda: sum(s.delivered + s.dead_lettered for s in n.stats()) == 4, 10
        )
        n.close()
        text = generate_latest(ControllerMetrics(lambda: (0, 0), notifications=n.stats).registry)
    lines = text.decode()
    assert f'steward_notifications_delivered_total{{sink="{sink_key(ok.url)}"}} 2.0' in lines
    assert (
        f'steward_notifications_dead_lettered_total{{sink="{sink_key(failing.url)}"}} 2.0' in lines
    )
    assert f'steward_notifications_pending{{sink="{sink_key(ok.url)}"}} 0.0' in lines
    assert "s3cr3t" not in lines and "127.0.0.1" not in lines
