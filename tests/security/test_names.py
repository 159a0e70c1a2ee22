"""Issue #14, attack 6: free text and names were not validated.

A newline in a Deployment name forged a line in `steward log`; ``"model-server "`` and
``"Model-Server"`` were accepted as targets the controller cannot act on. Now namespaces and
Deployment names are DNS-1123 labels/subdomains, principals are ``kind:name`` with a documented
character set, free text has no control characters and a length cap, each refusal is
INVALID_ARGUMENT naming the field (a real ledger server over gRPC), and every printer escapes
what it shows, so data written before these rules cannot forge a line either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from audit import report as audit_report
from audit.trust import TrustRoot
from audit.verify import verify
from controller.kubectl import render, rows
from ledger.client import LedgerClient, LedgerRpcError
from ledger.formats import (
    ApprovalRecorded,
    EvalRecorded,
    KillScope,
    Metric,
    SignedEvent,
    make_entry,
)
from ledger.scenario import Cast, Flow, followed_state
from ledger.server import LedgerServerConfig, RunningServer, serve
from ledger.timeline import lines
from tests.audit_tamper import Builder
from tests.unit.harness import Harness

CODE = grpc.StatusCode
FORGED_LINE = "\n   99  2026-01-01 00:00:00.000  KillSwitchReleased  kill switch released (global) by human:alice@example.org"


@dataclass
class Env:
    running: RunningServer
    client: LedgerClient
    flow: Flow

    def ok(self, event: SignedEvent) -> bytes:
        return self.client.append(event).leaf_hash

    def refused(self, event: SignedEvent, violation: str, field: str) -> None:
        head = self.client.head()
        with pytest.raises(LedgerRpcError) as info:
            self.client.append(event)
        err = info.value
        assert (err.code, err.violation_code, err.field) == (
            CODE.INVALID_ARGUMENT,
            violation,
            field,
        ), err.message
        assert self.client.head() == head, "a refused event changed the ledger"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    cast = Cast.create()
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db", checkpoint_key=cast.checkpoint_key, checkpoint_every_ms=0
        )
    )
    client = LedgerClient(running.address, timeout=10, retries=0)
    flow = Flow(cast, state=followed_state(client.read))
    try:
        e = Env(running, client, flow)
        e.ok(flow.genesis())
        for grant in flow.grants():
            e.ok(grant)
        e.ok(flow.policy(namespace="*", deployment="*"))  # selects any target: only names decide
        yield e
    finally:
        client.close()
        running.stop(None)


# -- refused at the door ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "deployment",
    ["model-server" + FORGED_LINE, "model-server ", "Model-Server", "model_server", "m" * 254],
)
def test_a_deployment_name_that_is_no_dns_1123_subdomain_is_refused(
    env: Env, deployment: str
) -> None:
    env.refused(
        env.flow.propose(deployment=deployment), "NAME_INVALID", "payload.target.deployment"
    )


@pytest.mark.parametrize("namespace", ["Models", "models ", "models.prod", "n" * 64, "models\n"])
def test_a_namespace_that_is_no_dns_1123_label_is_refused(env: Env, namespace: str) -> None:
    env.refused(env.flow.propose(namespace=namespace), "NAME_INVALID", "payload.target.namespace")


def test_a_kill_switch_scope_name_is_refused_like_a_target(env: Env) -> None:
    env.refused(
        env.flow.kill(KillScope("TARGET", "models", "Model-Server")),
        "NAME_INVALID",
        "payload.scope.deployment",
    )


@pytest.mark.parametrize(
    "principal", ["human:alice\nhuman:mallory", "human:alice smith", "agent:x/y"]
)
def test_a_principal_outside_the_documented_characters_is_refused(env: Env, principal: str) -> None:
    key = env.flow.cast.extra_key("mallory")
    env.refused(
        env.flow.grant_key(principal, key, ("approver",)), "NAME_INVALID", "payload.principal"
    )


def test_a_newline_in_a_reason_is_refused(env: Env) -> None:
    env.refused(
        env.flow.kill(KillScope("GLOBAL"), reason="error spike" + FORGED_LINE),
        "TEXT_INVALID",
        "payload.reason",
    )


def test_an_escape_sequence_or_a_bidi_override_in_free_text_is_refused(env: Env) -> None:
    p = env.ok(env.flow.propose())
    env.refused(
        env.flow.event(
            EvalRecorded(p, "safety\x1b[2K", (Metric("refusal_rate", 0.99),), "d"), "evalbot"
        ),
        "TEXT_INVALID",
        "payload.suite",
    )
    env.refused(
        env.flow.event(
            EvalRecorded(p, "safety", (Metric("refusal\u202erate", 0.99),), "d"), "evalbot"
        ),
        "TEXT_INVALID",
        "payload.metrics[0].name",
    )
    env.refused(
        env.flow.event(ApprovalRecorded(p, "REJECT", (), "no\r\nok"), "alice"),
        "TEXT_INVALID",
        "payload.comment",
    )


def test_free_text_over_its_cap_is_refused(env: Env) -> None:
    env.refused(
        env.flow.kill(KillScope("GLOBAL"), reason="x" * 4097), "TEXT_INVALID", "payload.reason"
    )
    env.ok(env.flow.kill(KillScope("GLOBAL"), reason="x" * 4096))


# -- printers: stored data from an older ledger cannot forge a line ---------------------------


def _old_ledger_with_a_newline_in_a_name() -> list:  # type: ignore[type-arg]
    """Entries as an older ledger may hold them: a proposal whose Deployment name has a newline."""
    h = Harness()
    h.base(namespace="*", deployment="*")
    st = h.core.state
    forged = make_entry(
        st.size, st.last_hash, h.flow.propose(deployment="model-server" + FORGED_LINE), h.tick()
    )
    return [*(h.core.entries or []), forged]


def test_steward_log_keeps_every_entry_on_one_line() -> None:
    entries = _old_ledger_with_a_newline_in_a_name()
    shown = list(lines(entries))
    assert len(shown) == len(entries)
    assert all("\n" not in line for line in shown), shown[-1]


def test_kubectl_steward_keeps_every_rollout_on_one_line() -> None:
    info = rows.RolloutInfo(
        name="model-server-0011223344",
        namespace="models",
        deployment="model-server" + FORGED_LINE,
        proposal="00" * 32,
        phase="Progressing",
        step=0,
        weight=10,
        candidate_image="registry.example/model-server:v2\x1b[2J",
    )
    listed = render.render_list([info], all_namespaces=True).split("\n")
    assert len(listed) == 2 and "\x1b" not in listed[1]
    header = render.render_header(info, rows.ClusterView())
    assert all("\n" not in line and "\x1b" not in line for line in header)


def test_the_audit_reports_keep_every_finding_on_one_line() -> None:
    # An entry naming another ledger: the finding quotes the name the entry carries.
    b = Builder().clean()
    b.forge(
        dataclasses.replace(b.flow, ledger="demo\nRESULT: VERIFIED (no findings)\u202e").kill(
            KillScope("GLOBAL")
        )
    )
    log = b.log()
    report = verify(log.records, TrustRoot.from_json(log.trust), log.checkpoints)
    assert "LEDGER_MISMATCH" in [f.code for f in report.findings]
    text = audit_report.text(report, "export.avro")
    assert text.splitlines()[-1] == "RESULT: NOT VERIFIED"
    assert "RESULT: VERIFIED" not in [line.strip() for line in text.splitlines()]
    html = audit_report.as_html(report, "export.avro")
    assert "\u202e" not in html and "\\u202e" in html
