"""A ledger server child process that tests SIGKILL and start again on the same store.

The server writes the port it listens on into a fresh port file at each start (``--port-file``);
its log is one file across restarts. ``args`` are what follows the interpreter, e.g.
``["-m", "ledger.server", "--db", PATH, "--checkpoint-key", KEY]`` or the benchmark launcher
``["-m", "bench.ingest", "--serve", SPEC, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.processes import Child, start_python, wait_for_port_file

REPO = Path(__file__).resolve().parents[2]


@dataclass
class LedgerServerProcess:
    """``start`` → address; ``kill`` (SIGKILL), ``stop`` (SIGTERM, then SIGKILL); ``log``."""

    args: list[str]
    workdir: Path
    name: str = "server"
    start_timeout: float = 30.0
    stop_grace: float = 10.0
    child: Child | None = None
    address: str = ""
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def launch(self) -> Path:
        """Start the process without waiting; returns the port file to hand to ``wait_ready``."""
        self.starts += 1
        port_file = self.workdir / f"{self.name}-port-{self.starts}"
        self.child = start_python(
            [*self.args, "--port-file", str(port_file)],
            self.log_path,
            name=self.name,
            cwd=REPO,
            append=True,
        )
        return port_file

    def wait_ready(self, port_file: Path) -> str:
        assert self.child is not None, "launch() first"
        port = wait_for_port_file(port_file, self.start_timeout, child=self.child)
        self.address = f"127.0.0.1:{port}"
        return self.address

    def start(self) -> str:
        return self.wait_ready(self.launch())

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(self.stop_grace)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
