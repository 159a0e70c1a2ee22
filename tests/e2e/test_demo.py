"""README's main-job command works, and what it leaves verifies with steward-audit."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

AUDIT = str(Path(sys.executable).parent / "steward-audit")  # the console script beside this Python


def test_demo_runs_and_its_export_verifies(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    demo = subprocess.run(
        [sys.executable, "-m", "ledger.demo", "--dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "SELF_APPROVAL" in demo.stdout
    assert "promoted" in demo.stdout
    match = re.search(r"^\s+(steward-audit verify .+)$", demo.stdout, re.MULTILINE)
    assert match, demo.stdout
    audit = subprocess.run(
        [AUDIT, *shlex.split(match.group(1))[1:]], capture_output=True, text=True, timeout=300
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "VERIFIED" in audit.stdout
    for name in ("keys", "ledger.db", "ledger-export.avro", "trust-root.json"):
        assert (out / name).exists(), name


def test_readme_commands_are_the_ones_ci_runs() -> None:
    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["scripts/demo", "scripts/test"]
    ci = (repo / ".ci" / "run").read_text()
    assert re.search(r"^scripts/test\b", ci, re.MULTILINE), (
        ".ci/run must call the README's test command"
    )


@pytest.mark.kube
def test_full_story_demo_promotes_after_a_kill_switch(tmp_path: Path) -> None:
    out = tmp_path / "story"
    demo = subprocess.run(
        [sys.executable, "-m", "controller.demo", "--dir", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    text = demo.stdout
    assert "SELF_APPROVAL" in text and "THRESHOLD_NOT_MET" in text
    assert re.search(r"canary gone \d+ ms after the kill switch", text)
    assert "promoted: model-server 4/4 ready (v3)" in text
    # The gate of step 1 was steward-monitor's samples from Prometheus, printed.
    assert re.search(r"gate: step 1: error-rate PASS from \[[^]]*0\.00\d+", text), text[-3000:]
    assert "checks passed: error-rate: 3 of 3 measurements" in text
    assert "metrics: steward_kill_switch_reaction_seconds_count 1.0" in text
    assert re.search(r"rolled back .*kill switch", text)
    match = re.search(r"^\s+(steward-audit verify .+)$", text, re.MULTILINE)
    assert match, text
    audit = subprocess.run(
        [AUDIT, *shlex.split(match.group(1))[1:]], capture_output=True, text=True, timeout=300
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
