"""Running the go command for the builds of third-party binaries: one environment, one runner.

The Kubernetes build (infra/kube_build.py) and the smaller Go tools (infra/go_tools.py) both go
through here, so every build runs with the machine's own toolchain, no cgo and no VCS stamping,
says it is alive once a minute, and fails with the tail of its log.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from infra import InfraError


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    # Never let the go command fetch a different toolchain behind our back.
    env.setdefault("GOTOOLCHAIN", "local")
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def run_go(
    args: Sequence[str],
    cwd: Path,
    what: str,
    *,
    log: Callable[[str], None],
    error: type[InfraError],
    env: dict[str, str] | None = None,
) -> str:
    """Run a go command, heartbeat while it runs, and raise ``error`` with the log tail if it fails.

    The whole output goes to ``cwd/<what>.log``; ``log`` gets one line a minute.
    """
    start = time.monotonic()
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = cwd / f"{what}.log"
    with log_path.open("w") as out_file:
        proc = subprocess.Popen(
            list(args), cwd=cwd, env=env or go_env(), stdout=out_file, stderr=subprocess.STDOUT
        )
        next_beat = 60.0
        while proc.poll() is None:
            time.sleep(1)
            elapsed = time.monotonic() - start
            if elapsed >= next_beat:
                log(f"  {what}: still building ({elapsed / 60:.0f} min)")
                next_beat += 60
    out = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-40:])
        raise error(f"{what} failed ({' '.join(args)}), exit {proc.returncode}:\n{tail}")
    return out
