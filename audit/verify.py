"""The verification, as numbered steps.

 1. decode every entry and body, checking the schema fingerprints;
 2. verify every author signature over the signed bytes received;
 3. check each key's validity at each seq (granted before, not revoked, not expired);
 4. check thresholds by distinct principal;
 5. check the hash chain (prev, seq gaps, reorders, insertions, truncation vs checkpoints);
 6. compute the Merkle root at every checkpoint size;
 7. verify every checkpoint's signed note (genesis checkpoint key, pinned vkey if given) and
    the witness cosignatures it carries (the trust root's witnesses and threshold);
 8. check consistency between checkpoints and with a checkpoint saved earlier;
 9. apply the governance rules (audit.rules, an independent implementation);
10. check rollout conformance (audit.conformance);
11. optionally compare the live cluster with what the log implies (audit.drift).

Everything found is collected as a :class:`Finding`; the walk goes on after a finding. An entry
with a finding in steps 1-4, 9 or 10 is not folded into the state (the controller would ignore
it), but it stays in the chain and the tree, which cover every record the log holds.

Signature verification is the dominant cost; everything else is kept to a small fraction of
one Ed25519 verification per entry (see docs/AUDIT.md "Speed"). With ``workers > 1`` the main
process decodes and ships chunks of (body bytes, public key, signature) to worker processes,
and folds the rules of earlier chunks while the workers verify later ones (a pipeline); the
verdicts come back as one byte per signature (audit.signatures).

The trust input is audit.trust; what the walk produces (findings, the report, the step names)
is audit.findings. What is left here is one idea, read top to bottom: the walk over the records
(driving, ordering and choosing among records that claim one seq, each entry's checks, and the
checks at the end), which is why it stays in one file past 600 lines.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Literal, TextIO

import steward_ed25519
from audit import rules, state
from audit.conformance import Conformance
from audit.cosignature import cosigned_by
from audit.ed25519 import verify as verify_ed25519
from audit.errors import DecodeError
from audit.findings import Finding, Report, TimelineEvent
from audit.formats import (
    DOMAIN_PREFIX,
    ZERO_HASH,
    ApprovalRecorded,
    Entry,
    EvalRecorded,
    EventBody,
    HealthReported,
    KeyGranted,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    ProposalSubmitted,
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
    decode_entry_and_body,
    key_id,
    signed_bytes,
)
from audit.merkle import CompactRange, consistency_proof, leaf_hash, verify_consistency
from audit.note import (
    Checkpoint,
    NoteError,
    Verifier,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    vkey_of,
)
from audit.signatures import ONE_VERDICT, VERDICT, SigTask, lower_priority, verify_chunk
from audit.trust import TrustRoot

PENDING_LIMIT = 4096  # out-of-order records held while waiting for a missing seq
CHUNK = 1024  # entries per worker task: large, so the per-task IPC cost is spread thin
CHUNK_INLINE = 128  # entries per verify-then-fold round in a single process
DEPTH = 2  # tasks in flight per worker: one being verified, one queued behind it
# With the native verifier's own threads a chunk costs no pickling, so it can be small: 1,024
# entries cost 3-4 µs more per entry than 128 in the fold (their decoded objects leave the
# cache before the rules read them; 2026-12-07, inline path, two rounds).
CHUNK_NATIVE = 128
DEPTH_NATIVE = 4
Tail = Literal["finding", "pending"]  # what entries past every signed checkpoint are
RECENT = 32  # signed bodies remembered per key, to recognise a signature moved from a nearby entry


# --------------------------------------------------------------------------------------------
# The verifier


@dataclass(slots=True)
class _Prepared:
    raw: bytes
    leaf: bytes
    entry: Entry | None
    body: EventBody | None
    error: DecodeError | None
    ok: tuple[bool | None, ...] = ()  # signature verdicts, set when the record is accepted
    pos: int = 0  # position in the source, 0-based
    early: bool = False  # arrived while a lower seq had not


def _parse_checkpoint_note(note: str) -> tuple[str, Checkpoint | None, str | None]:
    """(note, the checkpoint it carries or None, why it is not one or None); checked at the end."""
    try:
        return note, parse_checkpoint(parse_note(note).text), None
    except NoteError as exc:
        return note, None, str(exc)


def _decode_error(p: _Prepared) -> DecodeError:
    """Why a record is not folded as an entry (its decode error; an entry without its body)."""
    return p.error or DecodeError("undecodable")


class Progress:
    def __init__(self, stream: TextIO | None, total: int | None) -> None:
        self.stream, self.total, self.start, self.last = stream, total, time.monotonic(), 0.0

    def update(self, n: int, final: bool = False) -> None:
        if self.stream is None or (not final and n & 1023):
            return
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        rate = n / max(now - self.start, 1e-9)
        if self.total:
            frac = min(n / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"\rverifying [{bar:<30}] {n}/{self.total} entries {rate:,.0f}/s"
        else:
            text = f"\rverifying {n} entries {rate:,.0f}/s"
        self.stream.write(text + ("\n" if final else ""))
        self.stream.flush()


class LogVerifier:
    def __init__(
        self,
        trust: TrustRoot,
        checkpoint_notes: Iterable[str] = (),
        since_checkpoint: str | None = None,
        workers: int = 1,
        progress: TextIO | None = None,
        total: int | None = None,
        tail: Tail = "pending",
    ) -> None:
        self.trust = trust
        self.tail = tail
        self.workers = max(1, workers)
        self.report = Report()
        self.out = self.report.findings
        self.state = state.State()
        self.conf = Conformance()
        self.tree = CompactRange()
        self.leaves: list[bytes] = []
        self.roots: dict[int, bytes] = {}
        self.tree_ok = True  # False once a seq is missing: roots past it cannot be computed
        self.expected = 0
        self.last_leaf = ZERO_HASH
        self.chain_known = True
        self.cands: dict[int, list[_Prepared]] = {}  # seq -> records claiming it, not yet folded
        self.keymap: dict[bytes, bytes] = {}  # key id -> public key, for every grant in the log
        # Recent signed messages per key, to tell a signature moved from a nearby entry
        # (SIGNATURE_SWAPPED) from a corrupted one; failing signatures wait here for later ones.
        self.recent: dict[bytes, deque[tuple[int, bytes]]] = {}
        self.unresolved: dict[bytes, list[tuple[int, bytes]]] = {}  # key id -> (finding idx, sig)
        self.progress = Progress(progress, total)
        self.seen = 0
        self.checkpoints = [_parse_checkpoint_note(note) for note in checkpoint_notes]
        self.since = None if since_checkpoint is None else _parse_checkpoint_note(since_checkpoint)
        self.root_sizes = {c.size for _, c, _ in self.checkpoints if c is not None}
        if self.since and self.since[1] is not None:
            self.root_sizes.add(self.since[1].size)

    # -- driving -------------------------------------------------------------------------------

    def run(self, records: Iterable[bytes]) -> Report:
        start = time.monotonic()
        self.report.verifier = "native" if steward_ed25519.LIBRARY is not None else "libsodium"
        if self.workers > 1:
            self._run_parallel(iter(records))
        else:
            # In chunks here too: a run of verifications, then a run of rules, keeps each
            # one's code and tables hot in the caches (interleaving them per entry is slower).
            it = iter(records)
            while raws := list(islice(it, CHUNK_INLINE)):
                chunk, task = self._prepare_chunk(raws)
                self._accept_chunk(chunk, verify_chunk(task))
        self._finish()
        self.report.seconds = time.monotonic() - start
        return self.report

    def _accept_chunk(self, chunk: list[_Prepared], verdicts: bytes) -> None:
        """Steps 3-5, 9, 10 for a chunk, given its verdict bytes from verify_chunk."""
        accept, process, cands, progress = self._accept, self._process, self.cands, self.progress
        i = 0
        for p in chunk:
            entry = p.entry
            if entry is None:
                accept(p, ())
                continue
            n = len(entry.signatures)
            ok = (
                ONE_VERDICT[verdicts[i]]
                if n == 1
                else tuple([VERDICT[v] for v in verdicts[i : i + n]])
            )
            i += n
            # The common case, as _accept would do it: this record is for the seq after the
            # one record held (in order), so that one is folded and this one is held.
            expected = self.expected
            if entry.seq == expected + 1 and len(cands) == 1:
                group = cands.get(expected)
                if group is not None and len(group) == 1 and not group[0].early:
                    held = group[0]
                    p.ok = ok
                    p.pos = pos = self.seen
                    self.seen = pos + 1
                    if not self.seen & 1023:
                        progress.update(self.seen)
                    del cands[expected]
                    cands[expected + 1] = [p]
                    process(expected, held, held.ok)
                    continue
            accept(p, ok)

    def _run_parallel(self, records: Iterator[bytes]) -> None:
        """A pipeline: decode chunk k+1.. and fold the rules of chunk k while workers verify.

        With the native verifier the workers are its own threads (steward_ed25519.VerifierPool):
        they never take the interpreter lock, so nothing is forked or pickled and the chunks
        can be as small as the inline path's. Without it, libsodium is called once per
        signature from Python, which needs the lock, so the workers are processes."""
        if steward_ed25519.LIBRARY is not None:
            with steward_ed25519.VerifierPool(self.workers) as verifiers:
                self._pipeline(
                    records,
                    lambda task: verifiers.submit(DOMAIN_PREFIX, 2, *task),
                    CHUNK_NATIVE,
                    self.workers * DEPTH_NATIVE,
                )
            return
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        with ctx.Pool(self.workers, initializer=lower_priority) as pool:
            self._pipeline(
                records,
                lambda task: pool.apply_async(verify_chunk, (task,)).get,
                CHUNK,
                self.workers * DEPTH,
            )

    def _pipeline(
        self,
        records: Iterator[bytes],
        submit: Callable[[SigTask], Callable[[], bytes]],
        chunk_size: int,
        in_flight: int,
    ) -> None:
        """Keeps `in_flight` chunks out; `submit` hands one over and returns its wait."""
        inflight: deque[tuple[list[_Prepared], Callable[[], bytes]]] = deque()
        exhausted = False
        while not exhausted or inflight:
            while not exhausted and len(inflight) < in_flight:
                raws = list(islice(records, chunk_size))
                if not raws:
                    exhausted = True
                    break
                chunk, task = self._prepare_chunk(raws)
                inflight.append((chunk, submit(task)))
            if inflight:
                chunk, wait = inflight.popleft()
                self._accept_chunk(chunk, wait())

    def _prepare_chunk(self, raws: list[bytes]) -> tuple[list[_Prepared], SigTask]:
        """Step 1 (decode, fingerprints) and the leaf hash of each record of a chunk; learns the
        keys the chunk grants; and the chunk's worker task, built once the whole chunk is
        decoded (so a key granted anywhere in the chunk serves all of it)."""
        chunk: list[_Prepared] = []
        bodies: list[bytes] = []
        counts: list[int] = []
        kids: list[bytes] = []
        sigs: list[bytes] = []
        decode, prepared, keymap = decode_entry_and_body, _Prepared, self.keymap
        for raw in raws:
            leaf = leaf_hash(raw)
            try:
                entry, body = decode(raw)
            except DecodeError as exc:
                chunk.append(prepared(raw, leaf, None, None, exc))
                continue
            chunk.append(prepared(raw, leaf, entry, body, None))
            signatures = entry.signatures
            bodies.append(entry.body)
            counts.append(len(signatures))
            for s in signatures:
                kids.append(s.key_id)
                sigs.append(s.sig)
            p = body.payload
            if type(p) is KeyGranted:
                keymap.setdefault(key_id(p.public_key), p.public_key)
            elif type(p) is LedgerGenesis and entry.seq == 0:
                for r in p.roots:
                    keymap.setdefault(key_id(r.public_key), r.public_key)
        get = keymap.get
        return chunk, (bodies, counts, [get(k) for k in kids], sigs)

    # -- step 5: ordering, and which record of several claiming one seq is the chain's ---------
    #
    # A record is not folded as soon as it arrives: the candidates for the lowest seq not yet
    # folded (`expected`) wait until a record for the next seq arrives, so that when several
    # records claim one seq the chain member can be chosen on evidence rather than on arrival
    # order (see _choose). Records for later seqs wait too (out of order, or after a missing
    # seq), up to PENDING_LIMIT records.

    def _accept(self, p: _Prepared, sig_ok: tuple[bool | None, ...]) -> None:
        pos = self.seen
        self.seen = pos + 1
        if not self.seen & 1023:
            self.progress.update(self.seen)
        p.ok = sig_ok
        p.pos = pos
        cands = self.cands
        expected = self.expected
        if p.entry is not None:
            seq = p.entry.seq
        else:  # an undecodable record says nothing: it stands for the lowest seq not yet seen
            seq = expected
            while seq in cands:
                seq += 1
        group = cands.get(seq)
        if group is not None:
            for other in group:
                if other.leaf == p.leaf:
                    self.out.append(
                        Finding(
                            "ENTRY_DUPLICATED",
                            seq,
                            "an identical record for this seq appears again",
                            f"record #{pos}",
                            f"once, as record #{other.pos}",
                            record=pos,
                        )
                    )
                    return
            group.append(p)
        elif seq < expected:
            self._repeat(seq, p)
            return
        else:
            # Early: some lower seq has not arrived yet (ENTRY_REORDERED if it arrives later).
            if seq > expected and not (seq == expected + 1 and expected in cands):
                p.early = any(k not in cands for k in range(expected, seq))
            cands[seq] = [p]
        # Fold what is decided: the lowest seq's candidates once the next seq has a record.
        if (expected in cands and expected + 1 in cands) or len(cands) > PENDING_LIMIT:
            self._drain(final=False)

    def _drain(self, final: bool) -> None:
        cands = self.cands
        while cands:
            seq = self.expected
            group = cands.get(seq)
            nxt = cands.get(seq + 1)
            if group is None:
                if not final and len(cands) <= PENDING_LIMIT:
                    return
                self._gap()
                continue
            if nxt is None and not final and len(cands) <= PENDING_LIMIT:
                return
            del cands[seq]
            if len(group) == 1:
                chosen = group[0]
                self._fold_chosen(seq, chosen)
            else:
                self._choose(seq, group, nxt)

    def _fold_chosen(self, seq: int, chosen: _Prepared) -> None:
        """Fold the record the chain holds at seq (reporting it if it came before earlier seqs)."""
        if chosen.early:
            self.out.append(
                Finding(
                    "ENTRY_REORDERED",
                    seq,
                    "the record arrived before earlier seqs",
                    "out of seq order",
                    "records in seq order",
                    record=chosen.pos,
                )
            )
        self._process(seq, chosen, chosen.ok)

    def _choose(self, seq: int, group: list[_Prepared], nxt: list[_Prepared] | None) -> None:
        """Several records claim `seq`: fold the one the evidence names, report the others.

        The chain member is the candidate with the best (roots, next, signatures, prev), in that
        order, the earliest on a tie:
          roots      the checkpoint root at size seq+1 is the root with this record as leaf seq;
          next       a record for seq+1 names this record's leaf hash as its prev;
          signatures it decodes and every signature verifies with a key granted before seq;
          prev       its prev is the leaf hash of the entry folded at seq-1.
        The others are reported once each — ENTRY_INSERTED, or their decode error if they do not
        decode — and are not folded, so they cause no PREV_MISMATCH further on.
        """
        prevs = {n.entry.prev for n in nxt if n.entry is not None} if nxt else set()
        roots: set[bytes] = set()
        if self.tree_ok and seq + 1 in self.root_sizes:
            roots = {
                cp.root for _, cp, _ in self.checkpoints if cp is not None and cp.size == seq + 1
            }
            if (
                self.since is not None
                and self.since[1] is not None
                and self.since[1].size == seq + 1
            ):
                roots.add(self.since[1].root)

        def evidence(c: _Prepared) -> tuple[bool, bool, bool, bool]:
            root_ok = False
            if roots:
                tree = self.tree.copy()
                tree.append(c.leaf)
                root_ok = tree.root() in roots
            e = c.entry
            # Verdicts alone could name a key granted later in the same chunk: the keys must be
            # granted before this seq (the folded state), so the choice never depends on chunking.
            signed = (
                e is not None
                and c.body is not None
                and bool(c.ok)
                and all(v is True for v in c.ok)
                and all(s.key_id in self.state.keys for s in e.signatures)
            )
            prev_ok = e is not None and (not self.chain_known or e.prev == self.last_leaf)
            return root_ok, c.leaf in prevs, signed, prev_ok

        scored = [(evidence(c), c) for c in group]
        best = max(scored, key=lambda sc: sc[0])  # max keeps the first of equals: the earliest
        chosen = best[1]
        self._fold_chosen(seq, chosen)
        names = (
            "the checkpoint root at size {n} names",
            "the next entry's prev names",
            "only it is signed by known keys among them:",
            "only it follows the previous entry among them:",
        )
        for ev, c in scored:
            if c is chosen:
                continue
            why = next(
                (names[i].format(n=seq + 1) for i in range(4) if best[0][i] and not ev[i]),
                "it arrived first among equals:",
            )
            reason = f"the chain holds record #{chosen.pos} ({why} that one)"
            if c.error is not None or c.entry is None:
                err = _decode_error(c)
                self.out.append(Finding(err.code, seq, f"{err}; {reason}", record=c.pos))
            else:
                self.out.append(
                    Finding(
                        "ENTRY_INSERTED",
                        seq,
                        f"a second, different record claims this seq; {reason}",
                        c.leaf.hex(),
                        chosen.leaf.hex(),
                        record=c.pos,
                    )
                )

    def _repeat(self, seq: int, p: _Prepared) -> None:
        leaf = self.leaves[seq] if 0 <= seq < len(self.leaves) else b""
        if p.leaf == leaf:
            self.out.append(
                Finding(
                    "ENTRY_DUPLICATED",
                    seq,
                    "an identical record for this seq appears again",
                    f"record #{p.pos}",
                    "once",
                    record=p.pos,
                )
            )
        elif p.entry is None:
            err = _decode_error(p)
            self.out.append(Finding(err.code, seq, str(err), record=p.pos))
        else:
            self.out.append(
                Finding(
                    "ENTRY_INSERTED",
                    seq,
                    "a second, different record claims this seq, after the chain went past it",
                    p.leaf.hex(),
                    leaf.hex() if leaf else "",
                    record=p.pos,
                )
            )

    def _gap(self) -> None:
        cands = self.cands
        nxt = min(cands)
        self.out.append(
            Finding(
                "ENTRY_MISSING",
                self.expected,
                f"seq {self.expected}..{nxt - 1} missing from the log"
                if nxt - 1 > self.expected
                else f"seq {self.expected} missing from the log",
                f"next record is seq {nxt}",
                f"seq {self.expected}",
            )
        )
        self.tree_ok = False
        self.chain_known = False
        self.leaves.extend([b""] * (nxt - self.expected))  # keep leaves indexed by seq
        self.expected = nxt
        # The records after the gap did not come early: the missing seqs never came at all.
        k = nxt
        while k in cands:
            for c in cands[k]:
                c.early = False
            k += 1

    # -- steps 1-5, 9, 10 for one entry in seq order ---------------------------------------------

    def _process(self, seq: int, p: _Prepared, sig_ok: tuple[bool | None, ...]) -> None:
        out = self.out
        entry, body, leaf = p.entry, p.body, p.leaf
        # Step 5: the chain.
        if entry is not None and self.chain_known and entry.prev != self.last_leaf:
            out.append(
                Finding(
                    "PREV_MISMATCH",
                    seq,
                    "prev is not the previous entry's leaf hash",
                    entry.prev.hex(),
                    self.last_leaf.hex(),
                )
            )
        chain_findings = len(out)
        if p.error is not None or entry is None or body is None:
            err = _decode_error(p)
            out.append(Finding(err.code, seq, str(err)))
        else:
            # Steps 2-4, 9, 10 (one method with _process: this runs once per entry).
            st = self.state
            conf = self.conf
            at = entry.received_at
            if conf.pending:
                conf.tick(at, out)
            elif at > conf.last_at:  # what tick does when nothing is pending, without the call
                conf.last_at = at
            after_tick = len(out)
            payload = body.payload
            genesis_keys = (
                state.genesis_keys(payload) if type(payload) is LedgerGenesis and seq == 0 else None
            )
            signers = rules.resolve_signers(st, seq, entry, sig_ok, out, genesis_keys)
            if not self.unresolved and False not in sig_ok:
                # _swaps' fast path (nothing failed, nothing waits): remember the body per key.
                recent = self.recent
                for sg in entry.signatures:
                    kept = recent.get(sg.key_id)
                    if kept is None:
                        kept = recent[sg.key_id] = deque(maxlen=RECENT)
                    kept.append((seq, entry.body))
            else:
                self._swaps(seq, entry, sig_ok, after_tick)
            rules.check_structure(st, seq, body, out)
            if type(payload) is LedgerGenesis:
                if seq == 0:
                    rules.check_genesis(body, payload, signers, out)
                    self._check_trust(payload, signers)
            elif type(payload) is RolloutStep:
                conf.check_step(st, seq, entry, payload, signers, out)
            else:
                rules.check_payload(st, seq, entry, body, signers, out)
            if len(out) == after_tick:
                state.apply(st, seq, entry, body, leaf, signers)
                if type(payload) is KillSwitchEngaged:
                    conf.kill_engaged(st, seq, entry.received_at, payload.scope)
                elif type(payload) is RolloutStep:
                    conf.step_applied(payload, entry.received_at)
        clean = len(out) == chain_findings
        # The record is in the log whatever it holds: the chain and the tree cover it.
        self.leaves.append(leaf)
        self.last_leaf = leaf
        self.chain_known = True
        self.expected = seq + 1
        if self.tree_ok:
            tree = self.tree
            tree.append(leaf)
            if tree.size in self.root_sizes:
                self.roots[tree.size] = tree.root()
        if (
            clean
            and entry is not None
            and body is not None
            and type(body.payload) is not HealthReported
        ):
            self._timeline(seq, leaf, entry, body)  # most entries are health reports: not drawn

    def _swaps(self, seq: int, entry: Entry, sig_ok: tuple[bool | None, ...], first: int) -> None:
        """A failing signature, or earlier ones waiting: tell swapped signatures from corrupted
        ones. (When nothing failed and nothing waits, _process only remembers the body.)"""
        out = self.out
        message = signed_bytes(entry.body)
        bad = [i for i in range(first, len(out)) if out[i].code == "BAD_SIGNATURE"]
        for s, ok in zip(entry.signatures, sig_ok, strict=True):
            kid = s.key_id
            pub = self.keymap.get(kid)
            if pub is None:
                continue
            waiting = self.unresolved.get(kid)
            if waiting:
                for item in list(waiting):
                    if verify_ed25519(pub, item[1], message):
                        self._swapped(item[0], seq)
                        waiting.remove(item)
                if not waiting:
                    del self.unresolved[kid]
            if ok is False and bad:
                i = bad.pop(0)
                for other_seq, other_body in self.recent.get(kid, ()):
                    if verify_ed25519(pub, s.sig, signed_bytes(other_body)):
                        self._swapped(i, other_seq)
                        break
                else:
                    self.unresolved.setdefault(kid, []).append((i, s.sig))
            recent = self.recent.get(kid)
            if recent is None:
                recent = self.recent[kid] = deque(maxlen=RECENT)
            recent.append((seq, entry.body))

    def _swapped(self, i: int, other_seq: int) -> None:
        f = self.out[i]
        self.out[i] = Finding(
            "SIGNATURE_SWAPPED",
            f.seq,
            f"{f.message}; it is the signature of seq {other_seq}",
            f.observed,
            f.expected,
        )

    def _check_trust(self, g: LedgerGenesis, signers: state.Signers) -> None:
        listed = {(r.principal, r.public_key) for r in g.roots}
        pinned = set(self.trust.roots)
        if listed != pinned:
            self.out.append(
                Finding(
                    "TRUST_ROOT_MISMATCH",
                    0,
                    "genesis does not list exactly the pinned root keys",
                    ", ".join(sorted(f"{p}:{k.hex()[:16]}" for p, k in listed)),
                    ", ".join(sorted(f"{p}:{k.hex()[:16]}" for p, k in pinned)),
                )
            )
        pinned_keys = {k for _, k in pinned}
        signed_by = {k.principal for k in signers.keys if k.public_key in pinned_keys}
        need = max(self.trust.threshold or 0, g.root_threshold, 1)
        if len(signed_by) < need:
            self.out.append(
                Finding(
                    "TRUST_ROOT_MISMATCH",
                    0,
                    "genesis is not signed by enough pinned roots",
                    f"{len(signed_by)} principal(s)",
                    f">= {need}",
                )
            )
        if self.trust.vkey is not None and self.trust.vkey != vkey_of(
            g.checkpoint_key_name, g.checkpoint_public_key
        ):
            self.out.append(
                Finding(
                    "VKEY_MISMATCH",
                    0,
                    "the genesis checkpoint key is not the pinned vkey",
                    vkey_of(g.checkpoint_key_name, g.checkpoint_public_key),
                    self.trust.vkey,
                )
            )
        if self.trust.origin is not None and self.trust.origin != g.origin:
            self.out.append(
                Finding(
                    "ORIGIN_MISMATCH",
                    0,
                    "the genesis origin is not the pinned origin",
                    g.origin,
                    self.trust.origin,
                )
            )

    def _timeline(self, seq: int, leaf: bytes, entry: Entry, body: EventBody) -> None:
        p, at, tl = body.payload, entry.received_at, self.report.timeline
        if type(p) is HealthReported:  # most entries; not drawn
            return
        if isinstance(p, ProposalSubmitted):
            h = leaf
            self.report.proposals[h.hex()] = (
                f"{p.target.namespace}/{p.target.deployment} → {p.candidate.image}"
            )
            tl.append(TimelineEvent(at, seq, "proposal", h, "proposed"))
        elif isinstance(p, EvalRecorded):
            tl.append(TimelineEvent(at, seq, "eval", p.proposal, f"eval {p.suite}"))
        elif isinstance(p, ApprovalRecorded):
            kind = "approval" if p.decision == "APPROVE" else "reject"
            tl.append(TimelineEvent(at, seq, kind, p.proposal, p.decision.lower()))
        elif isinstance(p, RolloutStep):
            total = None
            if p.phase == "STARTED":
                total = p.observed.stable_replicas + p.observed.canary_replicas
            tl.append(TimelineEvent(at, seq, "step", p.proposal, p.phase, p.weight, total))
        elif isinstance(p, KillSwitchEngaged | KillSwitchReleased):
            kind = "kill" if isinstance(p, KillSwitchEngaged) else "release"
            tl.append(TimelineEvent(at, seq, kind, p.scope.proposal, f"{kind} {p.scope.kind}"))
        elif isinstance(p, RolloutPaused | RolloutResumed):
            kind = "pause" if isinstance(p, RolloutPaused) else "resume"
            tl.append(TimelineEvent(at, seq, kind, p.proposal, kind))

    # -- steps 5-8 at the end --------------------------------------------------------------------

    def _finish(self) -> None:
        self._drain(final=True)
        self.progress.update(self.seen, final=self.progress.stream is not None)
        out, size = self.out, self.expected
        self.report.entries = size
        self.report.ledger, self.report.origin = self.state.ledger, self.state.origin
        if size == 0:
            out.append(Finding("EMPTY_LOG", None, "the log holds no entry"))
        verifiers = self._verifiers()
        valid: list[tuple[str, Checkpoint]] = []
        for note, cp, err in self.checkpoints:
            good = self._check_note(note, cp, err, verifiers, "checkpoint")
            if good is not None:
                valid.append((note, good))
        self.report.checkpoints = len(self.checkpoints)
        valid.sort(key=lambda v: v[1].size)
        # Steps 5-6: truncation and roots.
        truncated_reported = False
        clean: list[tuple[str, Checkpoint]] = []
        for note, cp in valid:
            if cp.size > size:
                if not truncated_reported:
                    out.append(
                        Finding(
                            "LOG_TRUNCATED",
                            size,
                            f"a checkpoint commits to {cp.size} entries, the log holds {size}",
                            str(size),
                            f">= {cp.size}",
                        )
                    )
                    truncated_reported = True
                continue
            root = self.roots.get(cp.size)
            if root is None:
                continue  # after a missing seq: ENTRY_MISSING already says why
            if root != cp.root:
                out.append(
                    Finding(
                        "CHECKPOINT_ROOT_MISMATCH",
                        cp.size - 1 if cp.size else None,
                        f"checkpoint at size {cp.size} does not match the log",
                        cp.root.hex(),
                        root.hex(),
                    )
                )
            else:
                clean.append((note, cp))
        # Step 8: no two signed checkpoints for one size with different roots. Consecutive
        # checkpoints whose roots both equal the log's roots are consistent by construction
        # (the log in hand is the append-only witness); any other pair was reported above.
        by_size: dict[int, bytes] = {}
        for _, cp in valid:
            if by_size.setdefault(cp.size, cp.root) != cp.root:
                out.append(
                    Finding(
                        "CHECKPOINT_FORK",
                        cp.size - 1,
                        f"two signed checkpoints for size {cp.size} differ",
                        cp.root.hex(),
                        by_size[cp.size].hex(),
                    )
                )
        saved = self._check_since(verifiers, size, clean) if self.since is not None else None
        # Step 7, witnesses: only a checkpoint with the trust root's threshold of cosignatures
        # is relied on (none needed when the trust root names no witness).
        final = self._witnessed(valid, clean)
        signed = valid if self.tail == "finding" else final
        self._check_tail(
            size, [cp.size for _, cp in signed] + ([saved.size] if saved is not None else [])
        )
        if final and final[-1][1].size <= size:
            self.report.verified_checkpoint, self.report.verified_size = (
                final[-1][0],
                final[-1][1].size,
            )
        self.report.open_obligations = len(self.conf.finish(out))
        for step in range(1, 11):
            self.report.steps_run[step] = "run"
        if not self.checkpoints:
            for step in (6, 7, 8):
                self.report.steps_run[step] = "no checkpoint in the source"
        self.report.steps_run[11] = "not run (no --kubeconfig)"
        out.sort(key=lambda f: f.seq if f.seq is not None else -1)

    def _witnessed(
        self, valid: list[tuple[str, Checkpoint]], clean: list[tuple[str, Checkpoint]]
    ) -> list[tuple[str, Checkpoint]]:
        """The clean checkpoints with enough valid witness cosignatures, oldest first.

        A cosignature that claims a trusted witness's key and does not verify is a finding on
        any checkpoint. In a file (tail "finding") the newest clean checkpoint is the one the
        audit relies on: short of the threshold, it is CHECKPOINT_UNWITNESSED. In a live log,
        witnesses answer after the checkpoint is published: entries past the newest witnessed
        checkpoint are pending, not a finding.
        """
        witnesses, need = self.trust.witnesses, self.trust.witness_threshold
        if not witnesses:
            return clean
        counts: dict[str, list[str]] = {}
        for note, cp in valid:
            good, bad = cosigned_by(parse_note(note), witnesses)
            counts[note] = good
            for name in bad:
                self.out.append(
                    Finding(
                        "COSIGNATURE_BAD_SIGNATURE",
                        cp.size - 1 if cp.size else None,
                        f"checkpoint at size {cp.size}: the cosignature by witness {name} "
                        "does not verify",
                    )
                )
        final = [c for c in clean if len(counts.get(c[0], ())) >= need]
        if self.tail == "finding" and clean and (not final or final[-1] != clean[-1]):
            note, cp = clean[-1]
            got = counts.get(note, [])
            self.out.append(
                Finding(
                    "CHECKPOINT_UNWITNESSED",
                    cp.size - 1 if cp.size else None,
                    f"the newest checkpoint (size {cp.size}) carries {len(got)} of the "
                    f"{need} witness cosignatures the trust root requires",
                    ", ".join(got) or "none",
                    f">= {need} of " + ", ".join(w.name for w in witnesses),
                )
            )
        return final

    def _verifiers(self) -> list[Verifier]:
        if self.trust.vkey is not None:
            return [parse_vkey(self.trust.vkey)]  # the pinned key is the trust anchor
        st = self.state
        if not st.checkpoint_key_name or len(st.checkpoint_public_key) != 32:
            return []
        return [parse_vkey(vkey_of(st.checkpoint_key_name, st.checkpoint_public_key))]

    def _check_note(
        self,
        note: str,
        cp: Checkpoint | None,
        err: str | None,
        verifiers: list[Verifier],
        what: str,
    ) -> Checkpoint | None:
        seq = cp.size - 1 if cp is not None and cp.size else None
        if cp is None:
            self.out.append(
                Finding("CHECKPOINT_MALFORMED", None, f"{what} is not a C2SP checkpoint: {err}")
            )
            return None
        try:
            open_note(note, verifiers)
        except NoteError as exc:
            self.out.append(
                Finding(
                    "CHECKPOINT_BAD_SIGNATURE",
                    seq,
                    f"{what} at size {cp.size}: {exc}",
                    ", ".join(s.name + "+" + s.key_id.hex() for s in parse_note(note).signatures),
                    ", ".join(v.vkey for v in verifiers) or "the genesis checkpoint key",
                )
            )
            return None
        origin = self.trust.origin or self.state.origin
        if origin and cp.origin != origin:
            self.out.append(
                Finding(
                    "CHECKPOINT_ORIGIN_MISMATCH",
                    seq,
                    f"{what} at size {cp.size} is for another log",
                    cp.origin,
                    origin,
                )
            )
            return None
        return cp

    def _check_tail(self, size: int, signed_sizes: list[int]) -> None:
        """Step 5: entries past every signed checkpoint. The authors signed them, but nothing the
        ledger signed commits to them: a finding in a file, pending in a live log."""
        covered = max((n for n in signed_sizes if n <= size), default=0)
        if covered >= size:
            return
        first, last = covered, size - 1
        if self.tail == "pending":
            self.report.pending = (first, last)
            return
        newest = (
            f"the newest signed checkpoint is for size {covered}"
            if covered
            else "the source holds no signed checkpoint"
        )
        self.out.append(
            Finding(
                "UNCOVERED_TAIL",
                first,
                f"seqs {first}..{last} ({size - covered} entries) are covered by no signed checkpoint: {newest}",
                f"checkpoints up to size {covered}",
                f"a signed checkpoint for size {size}",
            )
        )

    def _check_since(
        self, verifiers: list[Verifier], size: int, clean: list[tuple[str, Checkpoint]]
    ) -> Checkpoint | None:
        """Step 8 against the saved checkpoint; it, if it verified and is not past the log."""
        assert self.since is not None
        note, cp, err = self.since
        saved = self._check_note(note, cp, err, verifiers, "the saved checkpoint")
        if saved is None:
            return None
        if saved.size > size:
            self.out.append(
                Finding(
                    "LOG_TRUNCATED",
                    size,
                    f"the log holds {size} entries, fewer than the saved checkpoint's {saved.size}",
                    str(size),
                    f">= {saved.size}",
                )
            )
            return None
        root = self.roots.get(saved.size)
        if root is not None and root != saved.root:
            self.out.append(
                Finding(
                    "CHECKPOINT_FORK",
                    saved.size - 1 if saved.size else None,
                    "the log was rewritten since the saved checkpoint: its root at that size differs",
                    root.hex(),
                    saved.root.hex(),
                )
            )
            return None
        if clean and self.tree_ok and clean[-1][1].size >= saved.size and saved.size:
            latest = clean[-1][1]
            proof = consistency_proof(self.leaves[: latest.size], saved.size)
            if not verify_consistency(saved.size, latest.size, proof, saved.root, latest.root):
                self.out.append(
                    Finding(
                        "CHECKPOINT_FORK",
                        latest.size - 1,
                        f"checkpoint {latest.size} is not consistent with the saved checkpoint {saved.size}",
                    )
                )
        return saved


def verify(
    records: Iterable[bytes],
    trust: TrustRoot,
    checkpoints: Iterable[str] = (),
    since_checkpoint: str | None = None,
    workers: int = 1,
    progress: TextIO | None = None,
    total: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    tail: Tail = "pending",
) -> Report:
    """Verify a log given as entry bytes in log order, with its checkpoint notes.

    `tail` says what entries past every signed checkpoint are: "finding" (UNCOVERED_TAIL) for a
    file, which will never be signed further; "pending" (Report.pending) for a live log.
    """
    v = LogVerifier(trust, checkpoints, since_checkpoint, workers, progress, total, tail)
    return v.run(records)
