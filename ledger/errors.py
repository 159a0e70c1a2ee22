"""One error base for everything Steward raises on purpose.

Callers (the CLI, the gRPC servicers) catch :class:`StewardError` once and turn it into a
message or a status code; anything else is a bug and is reported as an internal error.
Messages say what was observed and what was expected.
"""

from __future__ import annotations


class StewardError(Exception):
    """Base of every deliberate Steward error."""


class FormatError(StewardError):
    """Bytes that do not decode as the format says (truncated Avro, unknown fingerprint ...)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class UnknownSchemaError(FormatError):
    """A single-object encoding whose schema fingerprint is not one the project ships."""


class BadKeyError(StewardError):
    """A key that cannot be loaded, parsed or used (wrong passphrase, not Ed25519 ...)."""


class VerificationError(StewardError):
    """A signature, proof, note or checkpoint that does not verify."""


class StoreError(StewardError):
    """The log store failed; `retryable` says whether the same call may succeed later."""

    retryable: bool = False


class FencedError(StoreError):
    """Another writer took over this ledger; this one must stop appending."""


class StoreUnavailableError(StoreError):
    """The backend cannot be reached right now (broker down, database locked)."""

    retryable = True


class StoreDamagedError(StoreError):
    """The store holds damage to the ledger's own history (ledger.integrity): an entry the
    ledger acknowledged is missing or changed, or a signed checkpoint disagrees with the
    entries. Never retryable: the writer must not append over it (docs/RECOVERY.md).
    `damage` is the :class:`ledger.integrity.Damage` found."""

    def __init__(self, message: str, damage: object = None) -> None:
        super().__init__(message)
        self.damage = damage


class ConfigError(StewardError):
    """A configuration or topic setting that Steward refuses to run with."""


class LedgerStartingError(StewardError):
    """The ledger is still replaying its log: nothing can be read or appended yet; retry."""


class DataLossError(StewardError):
    """A record the ledger verified is gone from the store, or changed there since."""


class RequestError(StewardError):
    """A request the ledger refuses as asked; `field` names the request field at fault."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class OutOfRangeError(RequestError):
    """A seq or tree size beyond what the durable log holds (or a pair of sizes out of order)."""


class EntryNotFoundError(RequestError):
    """No durable entry at the seq asked for."""


class CheckpointNotFoundError(RequestError):
    """No checkpoint was published for the size asked for (or none at all yet)."""


class CheckpointPendingError(RequestError):
    """No checkpoint covers the entries a proof needs yet, and the caller may not have one
    published on demand: the periodic publisher will cover them; retry."""


class NoGenesisError(RequestError):
    """Asked for what only the genesis can say (the checkpoint key's name) before there is one."""


class CheckpointKeyMismatchError(RequestError):
    """A genesis naming a checkpoint key other than the one this server signs with."""
