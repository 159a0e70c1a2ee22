"""What the controller needs from the ledger, named as Protocols rather than passed as ``Any``.

The controller talks to the ledger through two narrow seams; ``ledger.client.LedgerClient``
satisfies both, and a test may hand in anything else that does:

- :class:`LedgerAccess`: what the running controller asks of the ledger server: append its own
  signed events (rollout steps, kill switches for unhealthy canaries; the executor), and look
  one entry up (the metrics time a kill switch from its ``received_at``);
- :class:`LedgerReader`: the ledger's Read stream, head and checkpoints, for a controller that
  replays through the ledger server instead of the storage (``replay.LedgerReadStore``) and
  for ``kubectl steward``, which folds the log locally.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from ledger.core import Receipt
from ledger.formats import LogEntry, SignedEvent

if TYPE_CHECKING:
    from ledger.client import CheckpointInfo, Head


class LedgerAccess(Protocol):
    def append(self, event: SignedEvent) -> Receipt:
        """Append one signed event; a retry after a lost answer returns the original receipt.

        A refusal raises ``ledger.client.LedgerRpcError`` (the executor reads its
        ``violation_code`` to tell an event recorded earlier from a rule it broke).
        """
        ...

    def get(self, seq: int) -> LogEntry:
        """The entry at ``seq``."""
        ...


class LedgerReader(Protocol):
    def read(
        self, start: int = 0, *, limit: int | None = None, follow: bool = False
    ) -> Iterator[LogEntry]:
        """Entries from ``start``, decoded, the hash chain checked; ``follow`` keeps waiting."""
        ...

    def head(self) -> Head: ...

    def checkpoints(self) -> Sequence[CheckpointInfo]: ...
