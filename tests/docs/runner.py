"""Runs a document's command examples in order, as a reader's shell would, and says clearly
which one failed: the document and line, the command as written and as run, its output's tail.

Each command runs in its own `bash -c` in the scene's directory; exports and `cd` carry over to
the next command (the shell's exported state is saved after each one). `steward`,
`steward-audit`, `steward-controller`, `kubectl-steward`, `steward-monitor` and `python` resolve to small scripts
that run this checkout's code with the test's interpreter, in a directory laid out like the
project's `.venv` (so `. .venv/bin/activate` works when a scene maps `.venv` to it).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.docs.collect import Example, ShownOutput, split_comment

REPO = Path(__file__).resolve().parents[2]
TAIL = 2500  # characters of output shown when a command fails
# A command that never ends (--follow, -w, watch) runs until its first output, at most
# FIRST_OUTPUT_SECONDS (starting a Python program on a loaded machine takes seconds), then
# FOLLOW_SECONDS more, and is stopped.
FIRST_OUTPUT_SECONDS = 30.0
FOLLOW_SECONDS = 3.0

ENTRY_POINTS = {
    "steward": "ledger.cli",
    "steward-audit": "audit.cli",
    "steward-controller": "controller.main",
    "kubectl-steward": "controller.kubectl",
    "steward-monitor": "monitor",
}


def make_venv(directory: Path) -> Path:
    """A directory shaped like `.venv` whose bin/ runs this checkout; returns its bin/."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, module in ENTRY_POINTS.items():
        _script(bin_dir / name, f'exec {shlex.quote(sys.executable)} -m {module} "$@"')
    for name in ("python", "python3"):
        _script(bin_dir / name, f'exec {shlex.quote(sys.executable)} "$@"')
    (bin_dir / "activate").write_text(
        f"VIRTUAL_ENV={shlex.quote(str(directory))}; export VIRTUAL_ENV\n"
        '_OLD_PATH="$PATH"; PATH="$VIRTUAL_ENV/bin:$PATH"; export PATH\n'
        'deactivate () { PATH="$_OLD_PATH"; export PATH; unset VIRTUAL_ENV; unset -f deactivate; }\n'
    )
    return bin_dir


def _script(path: Path, body: str) -> None:
    path.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"
        f" export PYTHONPATH\n{body}\n"
    )
    path.chmod(0o755)


class DocFailure(AssertionError):
    """An example that did not run as documented."""


def failure(example: Example, ran: str, problem: str, output: str = "") -> DocFailure:
    lines = [f"{example.where}: {problem}", f"  as written: {example.command}"]
    if ran != example.command:
        lines.append(f"  as run:     {ran}")
    if output:
        lines.append(f"  output (last {TAIL} characters):")
        lines += ["    " + line for line in output[-TAIL:].splitlines()]
    return DocFailure("\n".join(lines))


@dataclass
class Scene:
    """What a document assumes around its examples, said explicitly.

    placeholders: text in the examples -> the real value here (longest first when applied);
    a value may be a function, called when the example runs (for values made by earlier steps).
    bind: placeholder -> (command prefix, regex): the value is group 1 of the regex in the
    output of the latest command starting with that prefix (e.g. the proposal hash).
    given: command prefix -> a function run once before the first command starting with it
    (state the document assumes the reader already has, e.g. a key already granted).
    follow: prefixes of commands that keep running until stopped (--follow, -w, watch).
    exit_codes: command prefix -> the exit status the document says it has there.
    """

    placeholders: dict[str, str | Callable[[], str]] = field(default_factory=dict)
    bind: dict[str, tuple[str, str]] = field(default_factory=dict)
    given: dict[str, Callable[[], None]] = field(default_factory=dict)
    follow: tuple[str, ...] = ()
    exit_codes: dict[str, int] = field(default_factory=dict)
    timeout: float = 180.0


@dataclass
class Ran:
    example: Example
    command: str
    returncode: int | None
    output: str


class Shell:
    """One reader's shell session in `workdir` (see the module docstring)."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.state = workdir.parent / f".{workdir.name}.shell-state"
        self.state.write_text("")
        self.env = env
        self.background: list[tuple[subprocess.Popen[str], Path]] = []

    def _bash(self, command: str) -> list[str]:
        script = (
            f'. {shlex.quote(str(self.state))}; cd "${{PWD:-.}}" 2>/dev/null\n{command}\n'
            f"__rc=$?; export -p > {shlex.quote(str(self.state))}.next; exit $__rc\n"
        )
        return ["bash", "-c", script]

    def _keep_state(self, succeeded: bool) -> None:
        new = Path(f"{self.state}.next")
        if succeeded and new.exists():
            new.replace(self.state)

    def run(self, command: str, timeout: float) -> tuple[int, str]:
        proc = subprocess.run(
            self._bash(command),
            cwd=self.workdir,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
        self._keep_state(proc.returncode == 0)
        return proc.returncode, proc.stdout

    def start(self, command: str, log: Path) -> subprocess.Popen[str]:
        handle = log.open("w")
        proc = subprocess.Popen(
            self._bash(command),
            cwd=self.workdir,
            env=self.env,
            text=True,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.background.append((proc, log))
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> int | None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            return None
        return proc.returncode

    def close(self) -> None:
        for proc, _ in self.background:
            self.stop(proc)


@dataclass
class Runner:
    """Runs one document's examples in order; `ran` keeps what each printed."""

    shell: Shell
    scene: Scene
    ran: list[Ran] = field(default_factory=list)
    _given_done: set[str] = field(default_factory=set)

    def mapped(self, command: str) -> str:
        values: dict[str, str | Callable[[], str]] = dict(self.scene.placeholders)
        for placeholder, (prefix, pattern) in self.scene.bind.items():
            values[placeholder] = self._bound(placeholder, prefix, pattern)
        for placeholder in sorted(values, key=len, reverse=True):
            if placeholder in command:
                value = values[placeholder]
                command = command.replace(placeholder, value if isinstance(value, str) else value())
        return command

    def _bound(self, placeholder: str, prefix: str, pattern: str) -> Callable[[], str]:
        def value() -> str:
            for earlier in reversed(self.ran):
                if earlier.example.command.startswith(prefix):
                    match = re.search(pattern, earlier.output)
                    if match:
                        return match.group(1)
            raise DocFailure(
                f"placeholder {placeholder!r}: no earlier `{prefix}` printed {pattern!r}"
            )

        return value

    def run_all(self, examples: list[Example]) -> None:
        for example in examples:
            if example.runnable:
                self.run(example)

    def run(self, example: Example) -> Ran:
        for prefix, prepare in self.scene.given.items():
            if prefix not in self._given_done and example.command.startswith(prefix):
                self._given_done.add(prefix)
                prepare()
        try:
            command = self.mapped(example.command)
        except DocFailure as exc:
            raise failure(example, example.command, str(exc)) from None
        shell_part, _ = split_comment(command)
        if shell_part.endswith("&"):
            result = self._background(example, command)
        elif example.command.startswith(self.scene.follow) and self.scene.follow:
            result = self._follow(example, command)
        else:
            result = self._foreground(example, command)
        self.ran.append(result)
        return result

    def _foreground(self, example: Example, command: str) -> Ran:
        try:
            code, output = self.shell.run(command, self.scene.timeout)
        except subprocess.TimeoutExpired as exc:
            out = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode()
            raise failure(
                example, command, f"still running after {self.scene.timeout:.0f} s", out
            ) from None
        expected = next(
            (c for p, c in self.scene.exit_codes.items() if example.command.startswith(p)), 0
        )
        if code != expected:
            raise failure(example, command, f"exited {code}, expected {expected}", output)
        return Ran(example, command, code, output)

    def _background(self, example: Example, command: str) -> Ran:
        log = self.shell.workdir.parent / f"background-{example.line}.log"
        # The started process stands for the reader's background job: it runs the command
        # without the `&`, so its exit is the command's.
        proc = self.shell.start(split_comment(command)[0].removesuffix("&"), log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not log.read_text().strip():
            time.sleep(0.05)
        time.sleep(0.2)  # a process that prints and then dies at once is caught below
        if proc.poll() is not None:
            raise failure(
                example,
                command,
                f"started in the background but exited {proc.returncode}",
                log.read_text(),
            )
        if not log.read_text().strip():
            raise failure(example, command, "started in the background but printed nothing in 30 s")
        return Ran(example, command, None, log.read_text())

    def _follow(self, example: Example, command: str) -> Ran:
        log = self.shell.workdir.parent / f"follow-{example.line}.log"
        proc = self.shell.start(command, log)
        deadline = time.monotonic() + FIRST_OUTPUT_SECONDS
        while time.monotonic() < deadline and proc.poll() is None and not log.read_text().strip():
            time.sleep(0.05)
        time.sleep(FOLLOW_SECONDS)
        code = self.shell.stop(proc)
        self.shell.background.remove((proc, log))
        output = log.read_text()
        if code not in (None, 0):
            raise failure(example, command, f"exited {code} while following", output)
        if not output.strip():
            raise failure(
                example, command, f"printed nothing in {FIRST_OUTPUT_SECONDS:.0f} s of following"
            )
        return Ran(example, command, code, output)


# --------------------------------------------------------------------------------------------
# Shape: what a document shows a program printing must still be what it prints


HEADER = re.compile(r"^\s*[A-Z][A-Z_-]+(\s+[A-Z][A-Z_-]+)+\s*$")
LABEL = re.compile(r"^([A-Z][A-Za-z ]*):\s")


def shape_problems(shown: list[str], real: str) -> list[str]:
    """Column headers the document shows must appear as a line of the real output, and every
    `Label:` it shows must start a line there; values (ages, hashes, counts) may differ."""
    real_lines = [" ".join(line.split()) for line in real.splitlines()]
    problems = []
    for line in shown:
        if HEADER.match(line):
            header = " ".join(line.split())
            if not any(header in r for r in real_lines):
                problems.append(f"the columns {header!r} are not printed")
        elif LABEL.match(line):
            label = LABEL.match(line).group(1) + ":"  # type: ignore[union-attr]
            if not any(r.startswith(label) for r in real_lines):
                problems.append(f"no line starts with {label!r}")
    return problems


def check_shown_output(shown: ShownOutput, ran: list[Ran]) -> None:
    latest = next(
        (r for r in reversed(ran) if r.example.command.startswith(shown.of_command)), None
    )
    if latest is None:
        raise DocFailure(
            f"{shown.source}:{shown.line}: shows the output of `{shown.of_command}`, "
            "which no example before it runs"
        )
    check_example_output(f"{shown.source}:{shown.line}", shown.lines, latest)


def check_example_output(where: str, shown: list[str], ran: Ran) -> None:
    problems = shape_problems(shown, ran.output)
    if problems:
        raise failure(
            ran.example,
            ran.command,
            f"the output shown at {where} no longer matches: " + "; ".join(problems),
            ran.output,
        )
