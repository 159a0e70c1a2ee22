"""Every benchmark runs at its smoke size and writes its JSON with the expected metrics.

No speed is asserted (benchmarks are not timed tests); this keeps them working. Each bench
runs as a subprocess writing its results to a temporary directory; generated ledgers
are cached like any other run (bench.ledgergen).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

EXPECTED: dict[str, list[str]] = {
    "audit": [
        "raw Ed25519 verify (mean of samples)",
        "audit, 1 process",
        "audit, 1 process / raw",
        "audit, 2 workers",
        "audit, 2 workers / raw (1 core)",
        "ledger fold (decode+check+apply)",
        "ledger fold / raw",
    ],
    "replay": [
        "cold replay",
        "cold replay / raw",
        "snapshot write, first (a base: the whole state)",
        "snapshot: fold lock held, max",
        "snapshot write (capture + encode + commit), p50",
        "part write p50 / whole-state encode",
        "restart from snapshot, a new process (median)",
        "restart again in this process, which wrote the snapshot (median)",
        "  next views pass: views built again",
    ],
    "memory": [
        "resident after start",
        "growth per entry",
        "scratch index file (on disk)",
        "live state: open proposals",
        "resident after start, spilled ÷ in memory",
    ],
    "startup": ["fold only (median)", "verified start (median)", "verified start / fold only"],
    "ingest": [
        "kafka: AppendStream (full verification)",
        "kafka: unary Append p50 @ 500/s",
        "kafka: unary Append p99 @ 500/s",
        "kafka: raw producer acks=all, same bytes",
        "kafka: AppendStream / raw producer",
        "sqlite: AppendStream (full verification)",
        "sqlite: unary Append p99 @ 500/s",
        "sqlite: server resident growth over the stream",
        "bare gRPC unary call (no-op handler) @ 500/s: server CPU",
    ],
    "checkpoints": [
        "load: AppendStream",
        "on-demand checkpoint p50",
        "on-demand checkpoint p99",
        "coverage lag p99",
        "checkpoints published",
        "entries per checkpoint (median gap)",
    ],
    "killswitch": [
        "kill switch → canary 0 p50",
        "kill switch → canary 0 p99",
        "ack → canary 0 p99, no attack",
        "ack → canary 0 p99, under attack",
        "ack → canary 0: under attack / no attack (p99)",
        "engage sent → canary 0 p99, no attack",
        "engage sent → canary 0 p99, under attack",
        "engage sent → canary 0: under attack / no attack (p99)",
        "health checks answered under attack",
        "attacker streams refused (RESOURCE_EXHAUSTED)",
    ],
    "proofs": ["inclusion proof p99", "consistency proof p99"],
    "analysis": [
        "metric bad → canary 0, p50",
        "  bad → FAIL report on the log, p50",
        "  FAIL report → canary 0, p50",
        "monitor CPU per check",
        "monitor query+sign+submit per check (mean)",
    ],
}
MARKS = {
    "ingest": [pytest.mark.kafka],
    "killswitch": [pytest.mark.kube],
    "analysis": [pytest.mark.kube],
}


def run_smoke(name: str, tmp: Path, *extra: str, result: str = "") -> dict:
    env = {**os.environ, "STEWARD_BENCH_RESULTS": str(tmp / "results"), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke", *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((tmp / "results" / f"{result or name}.json").read_text())


@pytest.mark.parametrize("name", [pytest.param(n, marks=MARKS.get(n, [])) for n in EXPECTED])
def test_bench_smoke(name: str, tmp_path: Path) -> None:
    doc = run_smoke(name, tmp_path)
    assert doc["bench"] == name
    metrics = {r["metric"] for r in doc["rows"]}
    missing = [m for m in EXPECTED[name] if m not in metrics]
    assert not missing, f"{name} did not report {missing}; it reported {sorted(metrics)}"
    assert all(isinstance(r["value"], int | float) for r in doc["rows"])
    assert doc["machine"]["cpus"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("kafka", marks=pytest.mark.kafka)])
def test_ingest_history_streams_into_a_generated_ledger(backend: str, tmp_path: Path) -> None:
    """--history N: the same stream into servers started on bench.ledgergen's ledgers of 3,000
    and N events (a copy of the SQLite file, or a topic the Kafka store wrote them to), signed
    by their cast; every event accepted (the bench checks the head)."""
    doc = run_smoke("ingest", tmp_path, "--backends", backend, "--history", "4000")
    rows = {r["metric"]: r["value"] for r in doc["rows"]}
    for n in (3000, 4000):
        name = f"{backend} after {n:,}"
        assert rows[f"{name}: AppendStream (full verification)"] > 0
        # The history, its proposals, then the warm-up, the stream and the unary calls.
        assert doc["params"][f"{name}_entries"] == n + 32 + 100 + 600 + 50
    assert rows[f"{backend} after 4,000: AppendStream / {backend} after 3,000"] > 0
    assert f"{backend}: AppendStream (full verification)" in rows


@pytest.mark.parametrize("history", ["50", "3000", "-1"])
def test_ingest_history_shorter_than_its_baseline_is_refused(history: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--history", history],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert f"--history {history}: give more than 3,000 events" in out.stderr


@pytest.mark.kube
def test_killswitch_traffic_mode_reports_ack_to_weight_0(tmp_path: Path) -> None:
    """Traffic mode: ack → weight 0 is its own figure, and in every trial the route's weight
    reached 0 before the canary's replicas did (the bench checks it from the two watches)."""
    doc = run_smoke("killswitch", tmp_path, "--traffic", result="killswitch-traffic")
    rows = {r["metric"]: r for r in doc["rows"]}
    for metric in ("kill switch → weight 0 p50", "kill switch → weight 0 p99"):
        assert isinstance(rows[metric]["value"], int | float) and rows[metric]["value"] > 0
    assert "kill switch → canary 0 p99" in rows
    order = rows["weight 0 before canary 0"]
    assert order["value"] == doc["params"]["trials"] and order["met"] is True


def test_run_all_rejects_unknown_bench() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--only", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "unknown bench" in out.stderr


def test_checkpoint_coverage_lag_is_the_wait_until_a_checkpoint_covers_the_head() -> None:
    from bench.checkpoints import coverage_lags

    # (time, durable size, newest checkpoint size) as GetHead reports them
    heads = [(0.0, 10, 0), (1.0, 20, 10), (2.5, 20, 20), (3.0, 30, 20)]
    lags, uncovered = coverage_lags(heads)
    assert lags == [1.0, 1.5, 0.0]  # size 10 covered at t=1.0; size 20 at t=2.5
    assert uncovered == 1  # size 30 never covered while watched


def test_ingest_profile_probes_every_step_of_an_append(tmp_path: Path) -> None:
    # --profile wraps server functions by name with item counters; a changed signature
    # there breaks the profiled server (it once answered INTERNAL to the first append).
    profile = tmp_path / "profile"
    run_smoke("ingest", tmp_path, "--backends", "sqlite", "--profile", str(profile))
    doc = json.loads((profile / "sqlite-stream.json").read_text())
    probes = doc["probes"]
    for step in (
        "LedgerServer.decode",
        "LedgerServer.check_signatures",
        "LedgerServer._fold_locked",
        "LedgerServer._write",
        "LedgerServer._store_batch",
        "SQLiteLogStore.append",
    ):
        calls, _wall, _cpu, items = probes[step]
        assert calls > 0 and items > 0, (step, probes[step])
    assert doc["stacks"]["samples"] > 0
