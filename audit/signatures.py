"""Author signatures checked in batches: the inline path and the worker processes share it.

A batch (:data:`SigTask`) is flat so that it pickles as little more than the bytes themselves;
the answer is one verdict byte per signature. This is the auditor's hot loop: the whole batch
goes to the native verifier in one call when it is installed (steward_ed25519), else
libsodium is called directly, signature by signature, rather than through
:func:`audit.ed25519.verify`.
"""

from __future__ import annotations

import os

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

import steward_ed25519
from audit.formats import DOMAIN_PREFIX

# A worker task, flat so that it pickles as little more than the bytes themselves:
# (body bytes of each entry, signatures per entry, public key per signature (None: no key by
# that id anywhere in the log), signature per signature).
SigTask = tuple[list[bytes], list[int], list[bytes | None], list[bytes]]
# Verdict bytes: one per signature.
FALSE, TRUE, NOKEY = 0, 1, 2
# A verdict byte as the verdict (None: no key), and as the 1-tuple of an entry signed once.
VERDICT: tuple[bool | None, ...] = (False, True, None)
ONE_VERDICT: tuple[tuple[bool | None, ...], ...] = ((False,), (True,), (None,))


def lower_priority() -> None:
    """Worker initializer: yield the CPU to the main process when both want it.

    The main process (decode, rules, chain, in record order) is the pipeline's one serial
    stage; with more runnable processes than cores the scheduler would otherwise take turns
    and slow it down by the workers' share, while the workers have slack to spare.
    """
    try:
        os.nice(10)
    except OSError:
        pass  # not allowed here: run at the same priority


def verify_chunk(task: SigTask) -> bytes:
    """Worker entry point: one verdict byte (FALSE, TRUE, NOKEY) per signature of the chunk.

    The signed bytes are built here from the body bytes (domain prefix ‖ body minus its magic),
    so the main process neither copies them nor pickles them twice. libsodium is called
    directly (audit.ed25519.verify's checks inlined): this loop runs once per signature.
    """
    if steward_ed25519.LIBRARY is not None:
        return steward_ed25519.verify_bodies(DOMAIN_PREFIX, 2, *task)
    return verify_chunk_libsodium(task)


def verify_chunk_libsodium(task: SigTask) -> bytes:
    """:func:`verify_chunk` through libsodium, whether or not the native verifier is installed."""
    bodies, counts, pubs, sigs = task
    out = bytearray(len(sigs))
    prefix, sign_open, bad = DOMAIN_PREFIX, crypto_sign_open, BadSignatureError
    i = 0
    for body, n in zip(bodies, counts, strict=True):
        message = prefix + body[2:]
        for _ in range(n):
            pub = pubs[i]
            if pub is None:
                out[i] = NOKEY
            else:
                sig = sigs[i]
                if len(sig) == 64 and len(pub) == 32:
                    try:
                        sign_open(sig + message, pub)
                        out[i] = TRUE
                    except bad:
                        pass  # stays FALSE
            i += 1
    return bytes(out)
