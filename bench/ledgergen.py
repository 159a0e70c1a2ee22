"""A fast generator of large, valid, realistic ledgers for the benchmarks.

The ledger is what a busy Steward sees: a genesis by two of three roots, key grants (the demo
cast plus extra evaluators and monitors), one policy, then proposals interleaved across many
targets, each with rounds of evals (early rounds may fail), two human approvals bound to the
latest evals, a stream of health reports and, for some proposals, a full canary rollout
(STARTED, ADVANCED with a health gate, PROMOTED). Every event is signed and every entry passes
``ledger.rules`` (the test suite folds a small one to keep that true).

Speed: bodies and entries are encoded with fastavro straight from plain dicts (the same schemas
``ledger.formats`` ships, so the bytes are identical) and signed with the raw ``cryptography``
key; everything is deterministic for a seed (Ed25519 signatures are deterministic too), so the
cache under ``${STEWARD_CACHE:-~/.cache/steward}/bench/`` is valid across runs.

    python -m bench.ledgergen --events 1000000        # build (or reuse) the cached ledger
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sqlite3
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from infra import steward_cache
from ledger import checkpoint as notes
from ledger.formats import (
    DOMAIN_PREFIX,
    ENTRY_SCHEMA,
    EVENT_BODY_SCHEMA,
    SINGLE_OBJECT_MAGIC,
    ZERO_HASH,
)
from ledger.keys import PrivateKey
from ledger.merkle import MerkleTree
from ledger.scenario import CAST, Cast

# Bump when the workload changes: cached ledgers of another version are rebuilt.
GEN_VERSION = 3  # 2: signatures sorted by key id (one event, one encoding); 3: health reports
# during a rollout name the RolloutStep entry of the run they judge (#14)
LEDGER = "bench"
ORIGIN = "steward.dev/ledger/bench"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, so the bytes are reproducible
CHECKPOINT_EVERY = 10_000
ACTIVE = 32  # proposals in flight at once, one target each (rollouts never collide)
EXTRA_EVALUATORS = 4
EXTRA_MONITORS = 8
_LEN = struct.Struct(">I")


def cache_dir() -> Path:
    return steward_cache("bench")


@dataclass(frozen=True)
class _Key:
    principal: str
    key: PrivateKey
    key_id: bytes


class _Writer:
    """Encodes, signs and chains entries; keeps the Merkle tree for checkpoints."""

    def __init__(self, rng: random.Random, checkpoint_key: PrivateKey, out: Any) -> None:
        self.rng = rng
        self.out = out
        self.seq = 0
        self.prev = ZERO_HASH
        self.clock = T0
        self.tree = MerkleTree()
        self.signer = notes.Signer(ORIGIN, checkpoint_key.ed25519)
        self.checkpoints: list[tuple[int, str]] = []
        self.types: dict[str, int] = {}
        self.nbytes = 0
        self._buf = io.BytesIO()

    def _avro(self, schema: Any, record: dict[str, Any]) -> bytes:
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()

    def append(
        self,
        type_: str,
        payload: dict[str, Any],
        signers: tuple[_Key, ...],
        refs: tuple[bytes, ...] = (),
    ) -> bytes:
        """Write one entry; returns its leaf hash (what later events reference)."""
        self.clock += self.rng.randint(1, 40)
        body_record = {
            "ledger": LEDGER,
            "event_id": self.rng.randbytes(16),
            "type": type_,
            "issued_at": self.clock - 5,
            "refs": list(refs),
            "payload": (f"steward.v1.{type_}", payload),
        }
        binary = self._avro(EVENT_BODY_SCHEMA.parsed, body_record)
        body = SINGLE_OBJECT_MAGIC + EVENT_BODY_SCHEMA.fingerprint + binary
        message = DOMAIN_PREFIX + EVENT_BODY_SCHEMA.fingerprint + binary
        # Sorted by key id, each key once: the one encoding the rules accept.
        sigs = [
            {"key_id": k.key_id, "sig": k.key.ed25519.sign(message)}
            for k in sorted({k.key_id: k for k in signers}.values(), key=lambda k: k.key_id)
        ]
        entry_record = {
            "seq": self.seq,
            "prev": self.prev,
            "body": body,
            "signatures": sigs,
            "received_at": self.clock,
        }
        entry = (
            SINGLE_OBJECT_MAGIC
            + ENTRY_SCHEMA.fingerprint
            + self._avro(ENTRY_SCHEMA.parsed, entry_record)
        )
        leaf = hashlib.sha256(b"\x00" + entry).digest()
        self.out.write(_LEN.pack(len(entry)))
        self.out.write(entry)
        self.nbytes += len(entry)
        self.tree.append(leaf)
        self.seq += 1
        self.prev = leaf
        self.types[type_] = self.types.get(type_, 0) + 1
        if self.seq % CHECKPOINT_EVERY == 0:
            self.checkpoint()
        return leaf

    def checkpoint(self) -> None:
        if self.checkpoints and self.checkpoints[-1][0] == self.seq:
            return
        cp = notes.Checkpoint(ORIGIN, self.seq, self.tree.root(self.seq))
        self.checkpoints.append((self.seq, notes.sign_checkpoint(cp, self.signer)))


_OBSERVED = {
    "stable_replicas": 4,
    "canary_replicas": 0,
    "canary_ready": 0,
    "stable_image": "registry.example/model-server:v1",
    "canary_image": "",
}
PLAN_WEIGHTS = (10, 50, 100)


def _script(n: int, rng: random.Random, deployment: str) -> list[tuple[str, Any]]:
    """The steps of one proposal's life, in order (executed by `_run`)."""
    rounds = rng.choice((1, 2, 2, 3))
    steps: list[tuple[str, Any]] = [("propose", (n, deployment))]
    for r in range(rounds):
        last = r == rounds - 1
        # Early rounds sometimes fail the policy thresholds; the last round passes.
        steps.append(("eval", ("safety", 0.97 if last or rng.random() < 0.5 else 0.91)))
        steps.append(("eval", ("quality", 0.86 if last or rng.random() < 0.5 else 0.74)))
    steps += [("approve", "alice"), ("approve", "bob")]
    steps += [("health", rng.randrange(3)) for _ in range(rng.randint(6, 14))]
    if rng.random() < 0.15:  # a full canary rollout
        steps += [
            ("step", ("STARTED", 0)),
            ("health", 0),
            ("step", ("ADVANCED", 1)),
            ("health", 1),
            ("step", ("ADVANCED", 2)),
            ("step", ("PROMOTED", 2)),
        ]
    return steps


def _generate(n: int, seed: str, out: Any) -> tuple[_Writer, Cast, dict[str, Any]]:
    rng = random.Random(f"{seed}/{n}/{GEN_VERSION}")
    cast = Cast.create(seed=seed)
    keys = {h: _Key(a.principal, a.key, a.key.key_id) for h, a in cast.actors.items()}
    w = _Writer(rng, cast.checkpoint_key, out)
    # Genesis and grants.
    roots = [
        {"principal": keys[h].principal, "public_key": keys[h].key.public.raw}
        for h in ("root1", "root2", "root3")
    ]
    w.append(
        "LedgerGenesis",
        {
            "origin": ORIGIN,
            "roots": roots,
            "root_threshold": 2,
            "checkpoint_key_name": ORIGIN,
            "checkpoint_public_key": cast.checkpoint_key.public.raw,
        },
        (keys["root1"], keys["root2"]),
    )
    granted = [(h, p, roles) for h, p, roles in CAST if roles != ("root",)]
    evaluators, monitors = [keys["evalbot"]], [keys["monitor"]]
    for i in range(EXTRA_EVALUATORS):
        k = cast.extra_key(f"eval-{i}", seed)
        evaluators.append(_Key(f"service:evalbot-{i}", k, k.key_id))
        granted.append((f"eval-{i}", f"service:evalbot-{i}", ("evaluator",)))
    for i in range(EXTRA_MONITORS):
        k = cast.extra_key(f"monitor-{i}", seed)
        monitors.append(_Key(f"service:health-monitor-{i}", k, k.key_id))
        granted.append((f"monitor-{i}", f"service:health-monitor-{i}", ("monitor",)))
    by_principal = {k.principal: k for k in (*keys.values(), *evaluators, *monitors)}
    roots2 = (keys["root1"], keys["root2"])
    for _h, principal, roles in granted:
        k = by_principal[principal]
        w.append(
            "KeyGranted",
            {
                "principal": principal,
                "public_key": k.key.public.raw,
                "roles": list(roles),
                "expires_at": None,
            },
            roots2,
        )
    w.append(
        "PolicySet",
        {
            "policy_id": "default",
            "selector": {"namespace": "models", "deployment": "*"},
            "required_evals": [
                {"suite": "safety", "metric": "refusal_rate", "op": "GE", "threshold": 0.95},
                {"suite": "quality", "metric": "accuracy", "op": "GE", "threshold": 0.80},
            ],
            "approvals_required": 2,
            "approver_kinds": ["human"],
            "plan": [
                {"weight": wt, "hold_seconds": 0, "health_gate": i == 1}
                for i, wt in enumerate(PLAN_WEIGHTS)
            ],
            "veto_on_reject": True,
            "kill_release_approvals": 2,
            "kill_rollback_bound_ms": 5000,
        },
        roots2,
    )

    # Proposals in flight: slot -> (script, position, proposal hash, latest eval per suite).
    slots: list[dict[str, Any]] = []
    proposals = 0

    def new_slot(i: int) -> dict[str, Any]:
        nonlocal proposals
        proposals += 1
        return {"script": _script(proposals, rng, f"model-{i}"), "at": 0, "hash": b"", "evals": {}}

    slots = [new_slot(i) for i in range(ACTIVE)]
    while w.seq < n:
        i = rng.randrange(ACTIVE)
        s = slots[i]
        kind, arg = s["script"][s["at"]]
        s["at"] += 1
        h = s["hash"]
        if kind == "propose":
            num, deployment = arg
            image = f"registry.example/{deployment}:r{num}"
            s["hash"] = w.append(
                "ProposalSubmitted",
                {
                    "target": {"namespace": "models", "deployment": deployment},
                    "candidate": {
                        "image": image,
                        "model_digest": "sha256:" + hashlib.sha256(image.encode()).hexdigest(),
                    },
                    "baseline": {
                        "image": f"registry.example/{deployment}:stable",
                        "model_digest": "sha256:" + "0" * 64,
                    },
                    "rationale": "fine-tuned on the newest curated data; lower refusal errors",
                    "origin": {"agent": "agent:researcher-7", "run": f"run-{num:07d}"},
                },
                (keys["agent"],),
            )
        elif kind == "eval":
            suite, value = arg
            metric = "refusal_rate" if suite == "safety" else "accuracy"
            s["evals"][suite] = w.append(
                "EvalRecorded",
                {
                    "proposal": h,
                    "suite": suite,
                    "metrics": [{"name": metric, "value": value}],
                    "artifact_digest": "sha256:" + rng.randbytes(32).hex(),
                },
                (rng.choice(evaluators),),
                (h,),
            )
        elif kind == "approve":
            evals = [s["evals"]["safety"], s["evals"]["quality"]]
            w.append(
                "ApprovalRecorded",
                {"proposal": h, "decision": "APPROVE", "evals": evals, "comment": "looks good"},
                (keys[arg],),
                (h, *evals),
            )
        elif kind == "health":
            w.append(
                "HealthReported",
                {
                    "proposal": h,
                    "step": arg,
                    "healthy": True,
                    "metrics": [
                        {"name": "error_rate", "value": round(rng.random() / 500, 6)},
                        {"name": "p99_ms", "value": float(rng.randint(80, 140))},
                    ],
                },
                (rng.choice(monitors),),
                (h, s["run"]) if s.get("run") else (h,),  # the run it judges, while one is on
            )
        else:
            phase, step = arg
            weight = 100 if phase == "PROMOTED" else PLAN_WEIGHTS[step]
            s["run"] = w.append(
                "RolloutStep",
                {
                    "proposal": h,
                    "step": step,
                    "weight": weight,
                    "phase": phase,
                    "reason": phase.lower(),
                    "observed": _OBSERVED,
                },
                (keys["controller"],),
                (h,),
            )
        if s["at"] == len(s["script"]):
            slots[i] = new_slot(i)
    w.checkpoint()
    trust = {
        "origin": ORIGIN,
        "vkey": w.signer.vkey,
        "threshold": 2,
        "roots": [
            {"principal": keys[h].principal, "public_key_hex": keys[h].key.public.raw.hex()}
            for h in ("root1", "root2", "root3")
        ],
    }
    meta = {
        "version": GEN_VERSION,
        "seed": seed,
        "events": w.seq,
        "bytes": w.nbytes,
        "proposals": proposals,
        "types": w.types,
        "trust_root": trust,
        "checkpoints": [{"size": s, "note": note} for s, note in w.checkpoints],
        "root": w.tree.root().hex(),
    }
    return w, cast, meta


@dataclass(frozen=True)
class GeneratedLedger:
    """A cached ledger: length-prefixed entry bytes in seq order, and its metadata."""

    path: Path
    meta: dict[str, Any]

    @property
    def events(self) -> int:
        return int(self.meta["events"])

    @property
    def trust_root(self) -> dict[str, Any]:
        return dict(self.meta["trust_root"])

    @property
    def checkpoint_notes(self) -> list[str]:
        return [c["note"] for c in self.meta["checkpoints"]]

    def records(self) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            data = f.read()
        view, at, end = memoryview(data), 0, len(data)
        while at < end:
            (size,) = _LEN.unpack_from(view, at)
            yield bytes(view[at + 4 : at + 4 + size])
            at += 4 + size

    def load(self) -> list[bytes]:
        return list(self.records())

    def sqlite_path(self) -> Path:
        """The ledger in a SQLite log store (ledger.store.sqlite layout), built once and cached."""
        path = self.path.with_suffix(".sqlite")
        if path.exists():
            return path
        from ledger.store.sqlite import SQLiteLogStore

        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        SQLiteLogStore(tmp).close()  # creates the tables exactly as the store defines them
        con = sqlite3.connect(tmp)
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        rows = ((i, _event_id(rec), rec) for i, rec in enumerate(self.records()))
        con.executemany("INSERT INTO log_records(position, key, value) VALUES (?, ?, ?)", rows)
        con.executemany(
            "INSERT INTO log_checkpoints(size, note) VALUES (?, ?)",
            [(c["size"], c["note"]) for c in self.meta["checkpoints"]],
        )
        con.commit()
        con.close()
        tmp.replace(path)
        return path

    def export_path(self) -> Path:
        """The ledger as an offline export (audit.sources format), built once and cached."""
        path = self.path.with_suffix(".export.avro")
        if path.exists():
            return path
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        schema = fastavro.parse_schema(
            json.loads(
                (
                    Path(__file__).resolve().parents[1]
                    / "ledger"
                    / "schemas"
                    / "export_record.v1.avsc"
                ).read_text()
            )
        )
        genesis = next(self.records())
        metadata = {
            "steward.format": "steward-export/v1",
            "steward.ledger": LEDGER,
            "steward.origin": ORIGIN,
            "steward.vkey": self.meta["trust_root"]["vkey"],
            "steward.genesis": genesis.hex(),
            "steward.checkpoints": json.dumps(self.meta["checkpoints"]),
        }
        with tmp.open("wb") as out:
            fastavro.writer(
                out,
                schema,
                ({"seq": i, "entry": r} for i, r in enumerate(self.records())),
                metadata=metadata,
                codec="deflate",
            )
        tmp.replace(path)
        return path


def _event_id(entry: bytes) -> bytes:
    # The store key is the event id; for the cache it only needs to be stable, so decode lazily.
    from ledger.formats import decode_entry

    body = decode_entry(entry).body
    # body: magic(2) fingerprint(8) then Avro: ledger string (zigzag len + bytes), event_id fixed 16.
    at = 10
    length, shift, b = 0, 0, 0x80
    while b & 0x80:
        b = body[at]
        length |= (b & 0x7F) << shift
        shift += 7
        at += 1
    at += length >> 1  # zigzag of a non-negative length
    return body[at : at + 16]


def ledger(n: int, *, seed: str = "steward-bench", progress: bool = True) -> GeneratedLedger:
    """The cached ledger of `n` events for `seed`, generated on first use."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"ledger-v{GEN_VERSION}-{hashlib.sha256(seed.encode()).hexdigest()[:8]}-{n}"
    path = directory / f"{stem}.bin"
    meta_path = directory / f"{stem}.json"
    if path.exists() and meta_path.exists():
        return GeneratedLedger(path, json.loads(meta_path.read_text()))
    started = time.monotonic()
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    if progress:
        print(
            f"generating a ledger of {n:,} events into {directory} …", file=sys.stderr, flush=True
        )
    with tmp.open("wb") as out:
        _w, _cast, meta = _generate(n, seed, out)
    meta["generated_seconds"] = round(time.monotonic() - started, 1)
    tmp.replace(path)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    if progress:
        print(
            f"  done in {meta['generated_seconds']} s ({meta['bytes'] / 2**20:,.0f} MiB)",
            file=sys.stderr,
        )
    return GeneratedLedger(path, meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--seed", default="steward-bench")
    p.add_argument("--sqlite", action="store_true", help="also build the SQLite store copy")
    p.add_argument("--export", action="store_true", help="also build the offline export copy")
    args = p.parse_args(argv)
    g = ledger(args.events, seed=args.seed)
    print(
        json.dumps(
            {k: v for k, v in g.meta.items() if k not in ("checkpoints", "trust_root")}, indent=1
        )
    )
    if args.sqlite:
        print(g.sqlite_path())
    if args.export:
        print(g.export_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
