"""`steward`: the command line for people who govern a Steward ledger.

It signs locally with the user's key file and talks gRPC to the ledger server named by
--server or $STEWARD_SERVER. Private keys never leave the machine; passphrases come from an
environment variable (never a flag, so they stay out of shell history and process lists).
Every deliberate error derives from StewardError and is reported once, here, as one line.

`main` is the entry point (`steward`, `python -m ledger.cli`) and `build_parser` the grammar;
the commands live in the package's modules, one group each (docs/DESIGN.md 5.3).
"""

from __future__ import annotations

import sys

from ledger.cli.common import CliError
from ledger.cli.parser import build_parser
from ledger.errors import BadKeyError, FormatError, StewardError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except StewardError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, CliError | FormatError | BadKeyError) else 1
    except KeyboardInterrupt:
        return 130
