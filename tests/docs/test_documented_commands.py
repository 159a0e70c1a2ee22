"""Every command README.md, docs/ and the `--help` texts show runs as written, in order, per
document, against real services; what a document shows a program print still has that shape.

Each document with runnable examples has a scene below (the `kubectl steward` ones in
tests/docs/test_kubectl_documents.py, docs/INSTALL.md's in tests/docs/test_install_document.py): the few facts it assumes (a ledger server, key files the
reader already has, what `3fa2c1` stands for) bound explicitly. An example that cannot run on a test machine carries a visible `not run here: REASON` comment in the
document (docs/README.md, "Examples that run"); tests/docs/conftest.py prints the counts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.kafka_cluster import KafkaCluster
from infra.prometheus import MetricsSource, PrometheusServer
from ledger.client import LedgerClient
from ledger.scenario import Cast
from tests.docs.collect import LOOKS_LIKE_A_COMMAND
from tests.docs.documents import REPO, all_documents
from tests.docs.reader import Reader, run_document
from tests.docs.runner import Scene
from tests.docs.test_install_document import INSTALL_SCENES
from tests.docs.test_kubectl_documents import KUBECTL_SCENES
from tests.docs.world import LedgerServer, start_kafka_ledger, start_ledger

DOCUMENTS = all_documents()
PROPOSAL_HASH = r"entry hash ([0-9a-f]{64})"


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    r = Reader(tmp_path)
    try:
        yield r
    finally:
        r.shell.close()


@pytest.fixture
def cast() -> Cast:
    return Cast.create()


@pytest.fixture
def ledger(tmp_path: Path, cast: Cast) -> Iterator[LedgerServer]:
    server = start_ledger(tmp_path / "ledger", cast)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kafka_ledger(
    tmp_path: Path, cast: Cast, kafka_cluster: KafkaCluster, kafka_topic_name: str
) -> Iterator[LedgerServer]:
    """The same cast's ledger (same roots, origin and checkpoint key) on a Kafka topic."""
    server = start_kafka_ledger(
        tmp_path / "kafka-ledger", cast, kafka_cluster.bootstrap_servers, kafka_topic_name
    )
    try:
        server.checkpoint_now()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# The collector's rules, and that every document is covered


def test_no_untagged_block_looks_like_a_command() -> None:
    untagged = [
        f"{doc.source}:{line}" for doc in DOCUMENTS.values() for line in doc.untagged_commands
    ]
    assert not untagged, (
        "these fenced blocks start like a command but have no info string; tag them ```bash "
        "(examples, run by the tests) or ```text (a synopsis or output, not run): "
        + ", ".join(untagged)
    )


def test_every_document_with_runnable_examples_has_a_scene() -> None:
    covered = set(SCENES)
    missing = {
        s: len([e for e in d.examples if e.runnable])
        for s, d in DOCUMENTS.items()
        if s not in covered and any(e.runnable for e in d.examples)
    }
    assert not missing, (
        "documents with runnable examples and no scene in tests/docs/test_documented_commands.py "
        f"(add one, or mark what cannot run with a visible `# not run here: REASON`): {missing}"
    )


def test_the_collector_reads_markers_continuations_and_console_output(tmp_path: Path) -> None:
    from tests.docs.collect import markdown_document

    (tmp_path / "X.md").write_text(
        "```bash\n# not run here: a whole block\nsteward a \\\n  --b c\n```\n"
        "```bash\nsteward one   # fine\nsteward two   # not run here: needs a real cluster\n```\n"
        "```console\n$ steward log\nNAME   SEQ\nx      1\n```\n"
        "```\nsteward-audit verify --x\n```\n```text\nsteward-audit verify [--x]\n```\n"
    )
    doc = markdown_document(tmp_path / "X.md", tmp_path)
    assert [(e.line, e.command, e.not_run_reason) for e in doc.examples] == [
        (3, "steward a --b c", "a whole block"),
        (7, "steward one   # fine", None),
        (8, "steward two   # not run here: needs a real cluster", "needs a real cluster"),
        (11, "steward log", None),
    ]
    assert doc.examples[-1].output == ["NAME   SEQ", "x      1"]
    assert doc.untagged_commands == [15]
    assert LOOKS_LIKE_A_COMMAND.match("steward.dev/ledger/vectors") is None


# --------------------------------------------------------------------------------------------
# `steward --help`: from an empty directory to a released kill switch


def _governance_policy() -> str:
    """The policy file docs/GOVERNANCE.md shows: the one the worked example's note points to."""
    text = (REPO / "docs" / "GOVERNANCE.md").read_text()
    return text.split("## Policy files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]


def steward_help_scene(reader: Reader) -> Scene:
    from infra.processes import free_port

    address = f"127.0.0.1:{free_port()}"

    def exported() -> None:
        # The store verbs' examples take the reader's export of the ledger the worked example made.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ledger.cli",
                "export",
                "--server",
                address,
                "--out",
                str(reader.file("ledger-export.avro")),
            ],
            check=True,
            capture_output=True,
            cwd=reader.workdir,
            timeout=120,
        )

    def backed_up() -> None:
        # `sqlite3 ledger.db ".backup backup/ledger.db"`, and the reader picks this copy instead
        # of the export: the restore never writes over the file the previous line made.
        _sqlite_backup(reader.file("ledger.db"), reader.file("backup/ledger.db"))
        reader.file("ledger.restored.db").unlink(missing_ok=True)

    return Scene(
        placeholders={"127.0.0.1:7443": address},
        bind={"3fa2c1": ("steward propose", PROPOSAL_HASH)},
        given={
            "steward policy set": lambda: reader.file("policy.yaml").write_text(
                _governance_policy()
            ),
            "steward rollout pause": lambda: _rollout_started(reader, address),
            "steward rollout resume --proposal 3fa2c1 --key alice.pem --out": lambda: _paused_again(
                reader, address
            ),
            "steward store check --export": exported,
            "steward store restore --from sqlite:": backed_up,
        },
        follow=("steward log --follow",),
    )


def _signed_by_reader(
    reader: Reader, address: str, make: Callable[[object], object], *key_files: str
) -> None:
    """Append the event `make(state)` builds over the reader's ledger, signed with the reader's
    key files (or, for a key the scene makes, the PrivateKey given instead of a file name)."""
    from ledger.client import LedgerClient
    from ledger.events import new_body, sign
    from ledger.keys import PrivateKey
    from ledger.state import LedgerState

    client = LedgerClient(address)
    try:
        state = LedgerState()
        for e in client.read(0):
            state.apply(e)
        payload = make(state)
        keys = [
            k if isinstance(k, PrivateKey) else PrivateKey.load(reader.file(k)) for k in key_files
        ]
        body = new_body(state.ledger, payload, refs=state.binding_refs(payload))  # type: ignore[arg-type]
        client.append(sign(body, *keys))
    finally:
        client.close()


def _rollout_started(reader: Reader, address: str) -> None:
    """The pause examples act on a running rollout: bob approves too (the policy asks for two
    approvals), and the controller, which this scene does not run, records STARTED."""
    from ledger.formats import ApprovalRecorded, KeyGranted, ObservedState, RolloutStep
    from ledger.keys import PrivateKey

    def bobs_approval(state: Any) -> ApprovalRecorded:
        (p,) = state.proposals.values()
        suites = sorted({r.suite for r in state.policy_of(p).required_evals})
        evals = tuple(p.latest_evals[s].entry_hash for s in suites)
        return ApprovalRecorded(p.entry_hash, "APPROVE", evals, "")

    _signed_by_reader(reader, address, bobs_approval, "bob.pem")
    controller = PrivateKey.generate()
    _signed_by_reader(
        reader,
        address,
        lambda _s: KeyGranted(
            "service:steward-controller", controller.public.raw, ("controller",), None
        ),
        "root-a.pem",
        "root-b.pem",
    )

    def started(state: Any) -> RolloutStep:
        (p,) = state.proposals.values()
        weight = state.policy_of(p).plan[0].weight
        observed = ObservedState(4, 0, 0, "registry.example/model:v1", "")
        return RolloutStep(p.entry_hash, 0, weight, "STARTED", "approved", observed)

    _signed_by_reader(reader, address, started, controller)  # type: ignore[arg-type]


def _paused_again(reader: Reader, address: str) -> None:
    """The second resume example ends a later pause, which on-call signs."""
    from ledger.formats import RolloutPaused

    def pause(state: Any) -> RolloutPaused:
        (p,) = state.proposals.values()
        return RolloutPaused(p.entry_hash, "error rate creeping up")

    _signed_by_reader(reader, address, pause, "oncall.pem")


def _sqlite_backup(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite store, as `sqlite3 SOURCE ".backup TARGET"` makes."""
    import sqlite3

    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def test_steward_help_runs_from_an_empty_directory_to_a_released_kill_switch(
    reader: Reader,
) -> None:
    runner = run_document(DOCUMENTS["steward --help"], reader, steward_help_scene(reader))
    log = next(r for r in runner.ran if r.example.command.startswith("steward log")).output
    kinds = [
        line.split()[3]
        for line in log.splitlines()
        if line.split()[:1] != [""] and len(line.split()) > 3
    ]
    assert "KillSwitchEngaged" in kinds and kinds[-1] == "KillSwitchReleased", log


# --------------------------------------------------------------------------------------------
# README.md: the `steward` examples, then the auditor's, on SQLite and Kafka


def readme_scene(reader: Reader, ledger: LedgerServer, kafka_ledger: LedgerServer) -> Scene:
    cast = ledger.flow.cast
    reader.export("STEWARD_SERVER", ledger.address)
    for who in ("bob", "oncall"):  # keys the reader holds, granted long ago
        cast[who].key.save(reader.file(f"{who}.pem"))

    def alice_may_approve() -> None:
        # `steward keys new alice.pem` just made her key; the roots grant it, and an agent's
        # proposal with passing evals waits for approvals.
        from ledger.keys import PrivateKey

        key = PrivateKey.load(reader.file("alice.pem"))
        ledger.append(ledger.flow.grant_key("human:alice@example.org", key, ("approver",)))
        ledger.evaluated_proposal()

    def trust_root() -> None:
        ledger.checkpoint_now()
        ledger.trust_root(reader.file("trust-root.json"))
        kafka_ledger.append(kafka_ledger.flow.propose())
        kafka_ledger.checkpoint_now()

    return Scene(
        placeholders={
            "3fa2c1": lambda: ledger.proposals[-1].hex()[:6],
            "DIR/": "./",
            ".venv": str(reader.venv),
            "127.0.0.1:7443": ledger.address,
            "127.0.0.1:9092": kafka_ledger_bootstrap(kafka_ledger),
            "steward-prod": kafka_ledger_topic(kafka_ledger),
        },
        given={"steward approve": alice_may_approve, "steward-audit": trust_root},
        follow=("steward log --follow", "steward-audit watch"),
    )


def kafka_ledger_bootstrap(server: LedgerServer) -> str:
    return server.store_args[server.store_args.index("--kafka-bootstrap") + 1]


def kafka_ledger_topic(server: LedgerServer) -> str:
    return server.store_args[server.store_args.index("--topic") + 1]


@pytest.mark.kafka
def test_readme_examples_run_as_written(
    reader: Reader, ledger: LedgerServer, kafka_ledger: LedgerServer
) -> None:
    runner = run_document(
        DOCUMENTS["README.md"], reader, readme_scene(reader, ledger, kafka_ledger)
    )
    verified = [r for r in runner.ran if r.example.command.startswith("steward-audit verify")]
    assert len(verified) == 3 and all(
        "VERIFIED" in r.output or '"verified": true' in r.output for r in verified
    ), [r.output[-500:] for r in verified]


# --------------------------------------------------------------------------------------------
# docs/AUDIT.md and `steward-audit --help`: exports, checkpoints carried over, Kafka, gRPC


def audit_scene(reader: Reader, ledger: LedgerServer, kafka_ledger: LedgerServer) -> Scene:
    reader.export("STEWARD_SERVER", ledger.address)

    def exported_before() -> None:
        # The ledger side: an export, the pinned roots (trust.json), and the log has a checkpoint.
        ledger.evaluated_proposal()
        ledger.trust_root(reader.file("trust.json"))
        if not reader.file("ledger.avro").exists():
            ledger.export(reader.file("ledger.avro"))

    def a_later_export() -> None:
        ledger.evaluated_proposal()
        ledger.export(reader.file("later.avro"))

    def kafka_has_more() -> None:
        kafka_ledger.append(kafka_ledger.flow.propose())
        kafka_ledger.checkpoint_now()

    return Scene(
        placeholders={
            "127.0.0.1:50051": ledger.address,
            "127.0.0.1:9092": kafka_ledger_bootstrap(kafka_ledger),
            "steward-ledger": kafka_ledger_topic(kafka_ledger),
        },
        given={
            "steward export": exported_before,
            "steward-audit verify --export ledger.avro": exported_before,
            "steward-audit verify --export later.avro": a_later_export,
            "steward-audit verify --kafka": kafka_has_more,
            "steward-audit watch --kafka": kafka_has_more,
        },
        follow=("steward-audit watch",),
    )


@pytest.mark.kafka
@pytest.mark.parametrize("source", ["docs/AUDIT.md", "steward-audit --help"])
def test_audit_examples_run_as_written(
    source: str, reader: Reader, ledger: LedgerServer, kafka_ledger: LedgerServer
) -> None:
    runner = run_document(DOCUMENTS[source], reader, audit_scene(reader, ledger, kafka_ledger))
    since = next(r for r in runner.ran if "--since-checkpoint" in r.command)
    assert re.search(r"consisten", since.output, re.IGNORECASE), since.output
    assert (reader.workdir / "report.html").exists()


# --------------------------------------------------------------------------------------------
# docs/RECOVERY.md: checking a store offline and restoring it from a good copy


def recovery_scene(reader: Reader, ledger: LedgerServer, kafka_ledger: LedgerServer) -> Scene:
    def the_store() -> None:
        # The reader's ledger.db: a copy of a healthy server's store (the server refused to start
        # on the damaged one; what damage does is tests/security/test_storage.py's part).
        ledger.evaluated_proposal()
        ledger.checkpoint_now()
        _sqlite_backup(Path(ledger.store_args[1]), reader.file("ledger.db"))

    def the_export() -> None:
        ledger.export(reader.file("ledger-export.avro"))

    def another_copy(backup: bool) -> Callable[[], None]:
        def given() -> None:
            # The document shows three alternatives; the reader runs one. Each writes the same
            # new file, which restore never overwrites, so each starts without it.
            reader.file("ledger.restored.db").unlink(missing_ok=True)
            if backup:
                _sqlite_backup(reader.file("ledger.db"), reader.file("backup/ledger.db"))

        return given

    return Scene(
        placeholders={
            "broker1:9092": kafka_ledger_bootstrap(kafka_ledger),
            "steward-prod": kafka_ledger_topic(kafka_ledger),
            "--checkpoint-key ledger-checkpoint.pem ...": "--checkpoint-key ledger-checkpoint.pem --listen 127.0.0.1:0",
        },
        given={
            "steward store check --store sqlite:": the_store,
            "steward store check --export": the_export,
            "steward store restore --from sqlite:": another_copy(backup=True),
            "steward store restore --from kafka:": another_copy(backup=False),
            "python -m ledger.server": lambda: ledger.flow.cast.checkpoint_key.save(
                reader.file("ledger-checkpoint.pem")
            ),
        },
        follow=("python -m ledger.server",),
    )


@pytest.mark.kafka
def test_recovery_examples_run_as_written(
    reader: Reader, ledger: LedgerServer, kafka_ledger: LedgerServer
) -> None:
    runner = run_document(
        DOCUMENTS["docs/RECOVERY.md"], reader, recovery_scene(reader, ledger, kafka_ledger)
    )
    checks = [r for r in runner.ran if r.example.command.startswith("steward store check")]
    assert len(checks) == 3 and all("clean" in r.output for r in checks), [
        r.output[-400:] for r in checks
    ]
    assert reader.file("ledger.db.damaged").exists() and reader.file("ledger.db").exists()


# --------------------------------------------------------------------------------------------
# docs/WITNESS.md: a real litewitness, the reader's ledger restarted with it, a trust root


def witness_scene(reader: Reader, ledger: LedgerServer) -> Scene:
    from infra import go_tools
    from infra.processes import free_port
    from tests.docs.world import ORIGIN

    for tool in ("litewitness", "witnessctl"):  # as `go install` would put them on PATH
        reader.bin.joinpath(tool).symlink_to(go_tools.install(tool))
    reader.export("STEWARD_SERVER", ledger.address)
    address = f"127.0.0.1:{free_port()}"

    def restarted_with_the_witness() -> None:
        # The reader's own ledger.db and ledger.pem: the running ledger's, which stops first.
        ledger.checkpoint_now()
        ledger.stop()
        _sqlite_backup(Path(ledger.store_args[1]), reader.file("ledger.db"))
        ledger.flow.cast.checkpoint_key.save(reader.file("ledger.pem"))

    def more_entries() -> None:
        # Entries the ledger appended since it was restarted, so a new checkpoint is due.
        client = LedgerClient(address)
        try:
            client.append(ledger.flow.propose())
        finally:
            client.close()

    return Scene(
        placeholders={
            "example.org/steward/prod": ORIGIN,
            "127.0.0.1:7380": f"127.0.0.1:{free_port()}",
            "127.0.0.1:7443": address,
        },
        bind={"witness.example/w1+4a7b1c2d+BH3q...": ("curl", r"(witness\.example/w1\+\S+)")},
        given={"steward serve": restarted_with_the_witness, "steward checkpoint": more_entries},
    )


def test_witness_examples_run_as_written(reader: Reader, ledger: LedgerServer) -> None:
    runner = run_document(DOCUMENTS["docs/WITNESS.md"], reader, witness_scene(reader, ledger))
    audited = next(r for r in runner.ran if r.example.command.startswith("steward-audit"))
    assert "VERIFIED" in audited.output, audited.output[-800:]
    trust = json.loads(reader.file("trust.json").read_text())
    assert [w["name"] for w in trust["witnesses"]] == ["witness.example/w1"], trust


# docs/TILES.md: a ledger server with tiles, read by curl, steward-audit and the Go mirror


def tiles_scene(reader: Reader, ledger: LedgerServer) -> Scene:
    from infra.processes import free_port

    def the_readers_ledger() -> None:
        # The reader's ledger.db and ledger.pem: a copy of a ledger with a governance story and
        # a checkpoint; their server (the document's `steward serve`) serves its tiles.
        ledger.evaluated_proposal()
        ledger.checkpoint_now()
        _sqlite_backup(Path(ledger.store_args[1]), reader.file("ledger.db"))
        ledger.flow.cast.checkpoint_key.save(reader.file("ledger.pem"))

    return Scene(
        placeholders={
            "127.0.0.1:7443": f"127.0.0.1:{free_port()}",
            "127.0.0.1:7480": f"127.0.0.1:{free_port()}",
            "tools/tiles-mirror": str(REPO / "tools" / "tiles-mirror"),
        },
        given={
            "steward serve": the_readers_ledger,
            "steward-audit verify --tiles": lambda: ledger.trust_root(reader.file("trust.json")),
        },
        timeout=300,  # the first `go build` of the mirror fetches its modules
    )


def test_tiles_examples_run_as_written(reader: Reader, ledger: LedgerServer) -> None:
    runner = run_document(DOCUMENTS["docs/TILES.md"], reader, tiles_scene(reader, ledger))
    by_start = {r.example.command.split()[0]: r for r in runner.ran}
    assert f"\n{ledger.flow.origin}\n" in "\n" + runner.ran[1].output, runner.ran[1].output
    assert "beyond the newest checkpoint" in runner.ran[2].output
    assert "VERIFIED" in by_start["steward-audit"].output, by_start["steward-audit"].output
    mirrored = json.loads(by_start["./tiles-mirror"].output)
    assert mirrored["entries"] == mirrored["size"] > 0
    assert (reader.workdir / "mirror" / "entries.bin").exists()


# docs/ANALYSIS.md: steward-monitor against a real Prometheus, and a report judged by hand


def _analysis_policy() -> str:
    """The policy docs/ANALYSIS.md shows, with seconds where it says minutes: the scene waits
    for the monitor's first verdicts, not for an hour of traffic."""
    text = (REPO / "docs" / "ANALYSIS.md").read_text()
    policy = text.split("## The policy", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    for slow, fast in (
        ("interval_seconds: 60", "interval_seconds: 1"),
        ("count: 5", "count: 2"),
        ("[1m]", "[5s]"),
        ("[5m]", "[5s]"),
        ("hold_seconds: 300", "hold_seconds: 0"),
        ("hold_seconds: 600", "hold_seconds: 0"),
    ):
        policy = policy.replace(slow, fast)
    return policy


def analysis_scene(
    reader: Reader, ledger: LedgerServer, prometheus: PrometheusServer, metrics: MetricsSource
) -> Scene:
    cast = ledger.flow.cast
    reader.export("STEWARD_SERVER", ledger.address)
    for file, who in (("root-a.pem", "root1"), ("root-b.pem", "root2"), ("sre.pem", "monitor")):
        cast[who].key.save(reader.file(file))  # keys the reader holds (sre: granted monitor)

    def a_rollout_at_its_gated_step() -> None:
        # The canary serves traffic Prometheus scrapes; a proposal is approved and the
        # controller (signed here with its key) has started it and moved it to step 1.
        metrics.set("stable", rps=30)
        metrics.set("canary", rps=20, error_ratio=0.002)
        p = ledger.evaluated_proposal()
        evals = tuple(
            e.leaf_hash
            for e in ledger.client.read(0)
            if getattr(e.body.payload, "proposal", None) == p and e.body.type == "EvalRecorded"
        )
        for who in ("alice", "bob"):
            ledger.append(ledger.flow.approve(p, evals, who))
        ledger.append(ledger.flow.step(p, 0, 10, "STARTED"))
        ledger.append(ledger.flow.step(p, 1, 50, "ADVANCED"))

    return Scene(
        placeholders={
            "127.0.0.1:7443": ledger.address,
            "http://127.0.0.1:9090": prometheus.url,
            "127.0.0.1:9102": "127.0.0.1:0",
            "3fa2c1": lambda: ledger.proposals[-1].hex()[:6],
        },
        given={
            "steward policy set": lambda: reader.file("analysis-policy.yaml").write_text(
                _analysis_policy()
            ),
            "steward-monitor": a_rollout_at_its_gated_step,
        },
        follow=("steward log --follow",),
    )


def test_analysis_examples_run_as_written(
    reader: Reader,
    ledger: LedgerServer,
    prometheus: PrometheusServer,
    metrics_source: MetricsSource,
) -> None:
    from infra.processes import wait_for
    from ledger.formats import HealthReported

    scene = analysis_scene(reader, ledger, prometheus, metrics_source)
    runner = run_document(DOCUMENTS["docs/ANALYSIS.md"], reader, scene)

    def verdicts() -> list[str]:
        return [
            c.verdict
            for e in ledger.client.read(0)
            if isinstance(e.body.payload, HealthReported)
            for c in e.body.payload.checks
        ]

    # The monitor signed the run's samples until the check passed (it runs in the background).
    wait_for("a PASS from steward-monitor", lambda: "PASS" in verdicts(), 60)
    manual = next(r for r in runner.ran if r.example.command.startswith("steward health report"))
    assert "gated by checks (error-rate)" in manual.output


# Every document a scene above runs, and the test that runs it.
SCENES = {
    "docs/ANALYSIS.md": test_analysis_examples_run_as_written,
    "steward --help": test_steward_help_runs_from_an_empty_directory_to_a_released_kill_switch,
    "README.md": test_readme_examples_run_as_written,
    "docs/AUDIT.md": test_audit_examples_run_as_written,
    "steward-audit --help": test_audit_examples_run_as_written,
    "docs/RECOVERY.md": test_recovery_examples_run_as_written,
    "docs/WITNESS.md": test_witness_examples_run_as_written,
    "docs/TILES.md": test_tiles_examples_run_as_written,
    **KUBECTL_SCENES,  # tests/docs/test_kubectl_documents.py: on the local control plane
    **INSTALL_SCENES,  # tests/docs/test_install_document.py: the shipped manifests, from zero
}
