"""The switch between generated code and its plain equivalent: ``STEWARD_NO_CODEGEN``.

Three hot decoders build Python source from a schema or from a dataclass's fields, once, and
``exec`` it, because it measured faster than the same steps in closures: ``ledger.formats``
(fastavro's records into the event dataclasses), ``controller.snapshot`` (snapshot records into
the state's dataclasses) and ``audit.formats`` (the auditor's own Avro reader).
docs/PERFORMANCE.md, "Generated code", says what is generated, from what, and what it saves.

With ``STEWARD_NO_CODEGEN=1`` (any value but empty or ``0``) in the environment when they are
imported, all three build plain closures doing the same steps instead: the same values and the
same errors (tests/unit/test_codegen.py holds them to that), nothing exec'd, and code a reader
can step through. The auditor, which imports nothing from the ledger, reads the same variable
with its own copy of this check.
"""

from __future__ import annotations

import os

NO_CODEGEN_ENV = "STEWARD_NO_CODEGEN"


def codegen_enabled() -> bool:
    """Whether generated code is used: unless STEWARD_NO_CODEGEN is set to a non-zero value."""
    return os.environ.get(NO_CODEGEN_ENV, "") in ("", "0")


# Read once, at import: the decoders are built then.
GENERATE = codegen_enabled()
