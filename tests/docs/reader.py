"""The reader's machine for the documented examples: a working directory, HOME, the project's
commands on PATH; and running one document's examples there, in order, failing where it says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs.collect import Document
from tests.docs.runner import DocFailure, Runner, Scene, Shell, check_shown_output, make_venv


class Reader:
    def __init__(self, base: Path) -> None:
        self.venv = base / "venv"
        self.bin = make_venv(self.venv)
        self.workdir = base / "work"
        self.workdir.mkdir(parents=True)
        home = base / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
        env.update(
            HOME=str(home),
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
            STEWARD_CACHE=os.environ.get("STEWARD_CACHE", str(home / ".cache" / "steward")),
        )
        self.shell = Shell(self.workdir, env)

    def file(self, name: str) -> Path:
        return self.workdir / name

    def export(self, name: str, value: str) -> None:
        """As if the reader had run `export NAME=VALUE` before the document's first command."""
        self.shell.env[name] = value


def run_document(doc: Document, reader: Reader, scene: Scene) -> Runner:
    runner = Runner(reader.shell, scene)
    problem = ""
    try:
        runner.run_all(doc.examples)
        for shown in doc.shown_outputs:
            check_shown_output(shown, runner.ran)
    except DocFailure as exc:
        problem = str(exc)
    if problem:  # failed outside the handler, so the report is the message alone, once
        pytest.fail(problem, pytrace=False)  # the message says where; a traceback would not
    assert [e for e in doc.examples if e.runnable], f"{doc.source}: no runnable example left"
    return runner
