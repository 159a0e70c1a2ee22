"""Finds the command examples that README.md, docs/ and the `--help` texts show a reader.

The rules (docs/README.md, "Examples that run", says the same for writers):

- A fenced block whose info string starts with ``bash``, ``sh``, ``shell`` or ``console`` holds
  command examples. In ``console`` blocks only lines starting with ``$ `` are commands, and the
  lines after one are its output, checked for shape. A line ending in a backslash continues on
  the next one. Blank lines and lines that are only a ``#`` comment are not examples.
- A block whose info string starts with ``output`` shows the output of the document's latest
  example that starts with the rest of the info string (```` ```output kubectl steward get ````);
  it is checked for shape too.
- Any other block (``text``, ``yaml``, ``python``, none) is not run. An untagged block that
  starts like a command is an error: the writer says which it is.
- In a ``--help`` text, an indented line starting with ``steward``, ``steward-audit``,
  ``kubectl steward`` or ``export NAME=`` is an example.
- A comment containing ``not run here:`` marks what cannot run on a test machine, with the
  reason after it: at the end of one command's line, that command; on a comment line before the
  first command of a block, the whole block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

COMMAND_LANGUAGES = ("bash", "sh", "shell", "console")
MARKER = "not run here:"
LOOKS_LIKE_A_COMMAND = re.compile(
    r"^(\$ |(steward|steward-audit|steward-controller|kubectl|python3?|scripts/\S+)(\s|$))"
)
HELP_EXAMPLE = re.compile(r"^\s+((steward|steward-audit|kubectl steward)\s.*|export [A-Z_]+=\S.*)$")
FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")


@dataclass
class Example:
    """One command as a reader would copy it, and where it was found."""

    source: str  # README.md, docs/AUDIT.md, `steward --help`
    line: int  # 1-based line of its first line in the source
    command: str  # continuation lines joined, trailing comment kept
    not_run_reason: str | None = None
    output: list[str] = field(default_factory=list)  # what the document shows it prints

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.not_run_reason is None


@dataclass
class ShownOutput:
    """A block that shows what an earlier example prints (```output PREFIX)."""

    source: str
    line: int
    of_command: str
    lines: list[str]


@dataclass
class Document:
    source: str
    examples: list[Example] = field(default_factory=list)
    shown_outputs: list[ShownOutput] = field(default_factory=list)
    untagged_commands: list[int] = field(default_factory=list)  # lines of untagged command blocks

    @property
    def marked(self) -> list[Example]:
        return [e for e in self.examples if not e.runnable]


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment) of one shell line: a `#` after a blank, outside quotes, starts the comment."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def marker_reason(comment: str) -> str | None:
    if MARKER not in comment:
        return None
    return comment.split(MARKER, 1)[1].strip().rstrip(")").strip() or "(no reason given)"


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, text in lines:
        if pending is not None:
            number, text = pending[0], pending[1] + " " + text.strip()
            pending = None
        if text.rstrip().endswith("\\"):
            pending = (number, text.rstrip()[:-1].rstrip())
            continue
        joined.append((number, text))
    if pending is not None:
        joined.append(pending)
    return joined


def _block_examples(source: str, language: str, body: list[tuple[int, str]]) -> list[Example]:
    console = language == "console"
    examples: list[Example] = []
    block_reason: str | None = None
    commands: list[tuple[int, str]] = []
    for number, text in body:
        if console and not text.startswith("$ "):
            if not commands and text.startswith("#"):  # a comment above the first command
                block_reason = block_reason or marker_reason(text[1:])
            elif commands:
                commands.append((number, "\0" + text))  # output of the command before it
            continue
        text = text[2:] if console else text
        command, comment = split_comment(text)
        if not command.strip():
            if not commands and not examples:
                block_reason = block_reason or marker_reason(comment)
            continue
        commands.append((number, text))
    for number, text in _join_continuations([c for c in commands if not c[1].startswith("\0")]):
        command, comment = split_comment(text)
        if not command.strip():
            continue
        reason = marker_reason(comment) or block_reason
        examples.append(Example(source, number, text.strip(), reason))
    if console:  # attach each output line to the command above it
        by_line = {e.line: e for e in examples}
        current: Example | None = None
        for number, text in commands:
            if text.startswith("\0"):
                if current is not None:
                    current.output.append(text[1:])
            else:
                current = by_line.get(number, current)
    return examples


def markdown_document(path: Path, root: Path) -> Document:
    source = path.relative_to(root).as_posix()
    doc = Document(source)
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i].strip())
        if not opening:
            i += 1
            continue
        fence, info = opening.group(1), opening.group(2).strip()
        start = i + 1
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        language = info.split()[0] if info else ""
        if language in COMMAND_LANGUAGES:
            doc.examples += _block_examples(source, language, body)
        elif language == "output":
            doc.shown_outputs.append(
                ShownOutput(
                    source, start, info[len("output") :].strip(), [text for _, text in body]
                )
            )
        elif not language:
            first = next((text for _, text in body if text.strip()), "")
            if LOOKS_LIKE_A_COMMAND.match(first.strip()):
                doc.untagged_commands.append(start)
    return doc


def help_document(source: str, text: str) -> Document:
    """The examples in one `--help` text: indented lines that start with a Steward command."""
    doc = Document(source)
    lines = text.splitlines()
    candidates: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        match = HELP_EXAMPLE.match(lines[i])
        if match:
            number, command = i + 1, match.group(1)
            while command.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            candidates.append((number, command))
        i += 1
    for number, command in candidates:
        _, comment = split_comment(command)
        doc.examples.append(Example(source, number, command.strip(), marker_reason(comment)))
    return doc


def markdown_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
