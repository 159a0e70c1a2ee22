"""The auditor's error base: caught once in the CLI (exit status 2).

Problems *in the log* are never errors: they are findings. Errors are about the auditor's own
inputs and infrastructure: a file it cannot read, a broker it cannot reach, a bad flag.
"""

from __future__ import annotations


class AuditorError(Exception):
    """Base of every deliberate auditor error."""


class AuditError(AuditorError):
    """A usage or infrastructure problem: the audit could not be carried out."""


class DecodeError(AuditorError):
    """Bytes that do not decode as the format says; the verifier turns it into a finding."""

    def __init__(self, message: str, *, code: str = "DECODE_ERROR") -> None:
        super().__init__(message)
        self.code = code
