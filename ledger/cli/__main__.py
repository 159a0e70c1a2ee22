"""`python -m ledger.cli`: the same command line as `steward`."""

import sys

from ledger.cli import main

sys.exit(main())
