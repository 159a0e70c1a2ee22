"""Child processes for tests and benchmarks, and waiting on them with a deadline.

``start`` runs a command with its stdout and stderr captured to a log file and hands back a
:class:`Child`; ``start_python`` does the same for this interpreter (``-m ledger.server ...``).
``free_port`` picks a loopback port. ``wait_for`` polls any condition until a deadline;
``wait_for_port``, ``wait_for_port_file`` and ``wait_for_log`` are the conditions used most.
Given the child they wait on, the waits stop early when it exits and put the tail of its log
in the error, so a failure says why. ``Child.stop`` sends SIGTERM, then SIGKILL after a grace.

It lives in ``infra`` because both ``tests/`` and ``bench/`` already import ``infra`` (the
fixtures and benchmarks start Kafka and Kubernetes through it, and ``python -m bench.X`` from
the repository root finds it as well as pytest does), while neither should import the other.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from infra import InfraError

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


class WaitTimeoutError(InfraError, TimeoutError):
    """A wait ran past its deadline; the message names what it waited for and what it saw."""


class ChildExitedError(InfraError):
    """The child a wait depended on exited first; the message holds the tail of its log."""


@dataclass
class Child:
    """A started child process whose stdout and stderr go to ``log_path``; as a context manager,
    stopped (see ``stop``) when the block ends."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited (reaping it), else None."""
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL, and reap the process; nothing when it has already exited."""
        if self.running():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout)

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM; SIGKILL when it has not exited ``grace`` seconds later. Returns the exit code."""
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def exited_error(self, waiting_for: str) -> ChildExitedError:
        return ChildExitedError(
            f"{self.name} exited with code {self.returncode} while waiting for "
            f"{waiting_for}; the end of {self.log_path}:\n{self.log_tail()}"
        )


def start(
    argv: Sequence[str],
    log_path: Path,
    *,
    name: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    append: bool = False,
) -> Child:
    """Start ``argv`` with stdout and stderr written to ``log_path`` (appended to with ``append``,
    so a restarted process keeps one log)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab" if append else "wb") as log:  # the child keeps its own descriptor
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=None if env is None else dict(env),
        )
    return Child(name or Path(argv[0]).name, popen, log_path)


def start_python(
    args: Sequence[str],
    log_path: Path,
    *,
    name: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    append: bool = False,
) -> Child:
    """Start this interpreter with ``args`` (e.g. ``["-m", "ledger.server", ...]``), unbuffered
    so that its log is current whenever a wait shows its tail."""
    module = args[1] if len(args) > 1 and args[0] == "-m" else None
    return start(
        [sys.executable, *args],
        log_path,
        name=name or module,
        cwd=cwd,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        append=append,
    )


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 30.0,
    every: float = 0.1,
    *,
    child: Child | None = None,
) -> T:
    """Call ``probe`` every ``every`` seconds until it returns something truthy, and return that.

    Raises :class:`WaitTimeoutError` after ``timeout`` seconds, naming ``what`` and the last value
    seen; with ``child``, raises :class:`ChildExitedError` as soon as that process has exited. Both
    messages end with the tail of the child's log.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if child is not None and not child.running():
            raise child.exited_error(what)
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g}s waiting for {what}; last observed: {last!r}"
            if child is not None:
                message += f"\nthe end of {child.log_path}:\n{child.log_tail()}"
            raise WaitTimeoutError(message)
        time.sleep(every)


def wait_for_port(
    port: int, timeout: float, *, host: str = LOOPBACK, child: Child | None = None
) -> None:
    """Until something accepts connections on ``host:port``."""
    wait_for(
        f"{host}:{port} to accept connections",
        lambda: port_open(port, host),
        timeout,
        every=0.05,
        child=child,
    )


def wait_for_port_file(port_file: Path, timeout: float, *, child: Child | None = None) -> int:
    """Until a server has written the port it listens on into ``port_file``; returns that port."""

    def written() -> int | None:
        try:
            text = port_file.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text else None

    what = f"the port file {port_file.name}" if child is None else f"{child.name}'s port file"
    return wait_for(what, written, timeout, every=0.05, child=child)


def wait_for_log(child: Child, pattern: str, timeout: float, *, count: int = 1) -> list[str]:
    """Until ``count`` lines of the child's log match the regular expression ``pattern``;
    returns the matching lines."""
    regex = re.compile(pattern)

    def matched() -> list[str] | None:
        lines = [line for line in child.log().splitlines() if regex.search(line)]
        return lines if len(lines) >= count else None

    return wait_for(
        f"{count} line(s) matching {pattern!r} in {child.log_path.name}",
        matched,
        timeout,
        every=0.1,
        child=child,
    )
