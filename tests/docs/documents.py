"""Every document whose examples the tests run: README.md, docs/**.md and the `--help` texts."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from tests.docs.collect import Document, help_document, markdown_document, markdown_files

REPO = Path(__file__).resolve().parents[2]


def _help_pages(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """(`PROG --help`, its text) for the parser and every subcommand, depth first."""
    yield f"{parser.prog} --help", parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _help_pages(sub)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from audit.cli import _parser as audit_parser
    from controller.kubectl.main import build_parser as kubectl_parser
    from ledger.cli import build_parser as steward_parser

    return {
        "steward --help": steward_parser(),
        "steward-audit --help": audit_parser(),
        "kubectl steward --help": kubectl_parser(),
    }  # keys: how a reader asks for them


def help_documents() -> list[Document]:
    """One document per program; an example its subcommands' help repeats counts once."""
    documents = []
    for source, parser in _parsers().items():
        doc = Document(source)
        seen: set[str] = set()
        for page, text in _help_pages(parser):
            for example in help_document(page, text).examples:
                if example.command not in seen:
                    seen.add(example.command)
                    doc.examples.append(example)
        documents.append(doc)
    return documents


def markdown_documents() -> list[Document]:
    return [markdown_document(path, REPO) for path in markdown_files(REPO)]


def all_documents() -> dict[str, Document]:
    return {doc.source: doc for doc in [*markdown_documents(), *help_documents()]}
