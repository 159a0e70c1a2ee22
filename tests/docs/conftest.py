"""Prints, after the run, how many command examples each document has, how many the tests run
and which ones are marked `not run here`, with the reason."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.docs.documents import all_documents

    if (
        not any(
            "tests/docs" in str(arg) or arg.endswith("tests") or arg == "."
            for arg in terminalreporter.config.args
        )
        and terminalreporter.config.args
    ):
        return
    documents = all_documents()
    write = terminalreporter.write_line
    terminalreporter.section("documented command examples")
    total = run = marked = 0
    for source, doc in documents.items():
        if not doc.examples:
            continue
        n_marked = len(doc.marked)
        total, run, marked = (
            total + len(doc.examples),
            run + len(doc.examples) - n_marked,
            marked + n_marked,
        )
        write(
            f"{source:28} {len(doc.examples):3} found, {len(doc.examples) - n_marked:3} runnable, "
            f"{n_marked:3} marked not run here"
        )
    write(f"{'all documents':28} {total:3} found, {run:3} runnable, {marked:3} marked not run here")
    for doc in documents.values():
        for example in doc.marked:
            write(f"  not run here: {example.where}: {example.not_run_reason}")
