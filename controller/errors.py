"""The controller's error base: every exception the controller raises on purpose derives from it.

:class:`ControllerError` is a :class:`ledger.errors.StewardError`: Steward's convention is one
base for every deliberate error, caught once by entry points (``steward-controller``'s start-up,
the CLIs) and turned into a message, while anything else is a bug. The controller already
builds on the ledger's packages, so it joins that tree rather than starting a second one.
"""

from __future__ import annotations

from ledger.errors import StewardError


class ControllerError(StewardError):
    """Base of every deliberate controller error (a refused action, a snapshot it cannot use)."""


class SnapshotError(ControllerError):
    """The blob is not a snapshot this code wrote: the caller replays the log instead."""
