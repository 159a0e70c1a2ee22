"""Shared bits of the benchmarks: a result table printed for people and JSON for machines.

Benchmarks report ratios measured in one run (e.g. audit events/s ÷ raw Ed25519 verifications/s
on the same machine, same process, same minute), so the figures hold on a noisy machine.
They are not tests: CI runs each with --smoke to keep it working, and asserts nothing on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("STEWARD_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


@dataclass
class Row:
    metric: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None


@dataclass
class Report:
    bench: str
    rows: list[Row] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def add(
        self, metric: str, value: float, unit: str, goal: str = "", met: bool | None = None
    ) -> None:
        self.rows.append(Row(metric, value, unit, goal, met))

    def emit(self) -> None:
        width = max(len(r.metric) for r in self.rows)
        print(f"\n{self.bench}  ({', '.join(f'{k}={v}' for k, v in self.params.items())})")
        for r in self.rows:
            verdict = "" if r.met is None else ("  ✓ goal met" if r.met else "  ✗ goal missed")
            goal = f"  (goal {r.goal})" if r.goal else ""
            print(f"  {r.metric:<{width}}  {r.value:>14,.3f} {r.unit}{goal}{verdict}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        doc = {
            "bench": self.bench,
            "params": self.params,
            "machine": machine(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rows": [asdict(r) for r in self.rows],
        }
        out = RESULTS / f"{self.bench}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"  → {out}")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Seconds per call, `repeat` calls."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the benchmark runs (CI)"
    )
    return p


def raw_ed25519_rate(n: int = 2000) -> float:
    """Raw Ed25519 verifications per second with the `cryptography` package, this process."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    messages = [os.urandom(200) for _ in range(64)]
    sigs = [key.sign(m) for m in messages]
    start = time.perf_counter()
    for i in range(n):
        public.verify(sigs[i % 64], messages[i % 64])
    return n / (time.perf_counter() - start)


def raw_libsodium_rate(n: int = 2000) -> float:
    """Raw strict Ed25519 verifications per second with libsodium (PyNaCl), this process.

    The primitive the ledger and the auditor verify with (audit.ed25519); the goals are stated
    against `cryptography` (raw_ed25519_rate), so this one says how much of a ratio comes from
    the faster primitive and how much from the code around it.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from nacl.bindings import crypto_sign_open

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    messages = [os.urandom(200) for _ in range(64)]
    signed = [key.sign(m) + m for m in messages]
    start = time.perf_counter()
    for i in range(n):
        crypto_sign_open(signed[i % 64], public)
    return n / (time.perf_counter() - start)


def raw_native_rate(n: int = 2000) -> float | None:
    """Strict Ed25519 verifications per second through the native verifier, in
    batches of 64 as audit.signatures sends them; None when it is not installed.

    The primitive steward-audit calls when it is there (steward_ed25519): the audit rows
    divided by it say how much the code around verification costs, as the libsodium rows did
    before it.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import steward_ed25519

    if steward_ed25519.LIBRARY is None:
        return None
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    bodies = [b"\x00\x00" + os.urandom(200) for _ in range(64)]
    sigs = [key.sign(b[2:]) for b in bodies]
    rounds = max(1, n // 64)
    start = time.perf_counter()
    for _ in range(rounds):
        steward_ed25519.verify_bodies(b"", 2, bodies, [1] * 64, [public] * 64, sigs)
    return rounds * 64 / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Profiling a server process: per-call probes and a sampler of every thread's stack


class Probes:
    """Calls, wall time and thread CPU time of chosen functions, across all threads.

    ``wrap("pkg.mod.Class.method")`` replaces the function where it is defined and in every
    loaded module that imported it by name, so ``from x import f`` callers are counted too.
    `items` optionally counts what a call handles (e.g. events in a group commit).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stats: dict[str, list[float]] = {}  # name -> [calls, wall s, cpu s, items]

    def _record(self, name: str, wall: float, cpu: float, items: int) -> None:
        with self._lock:
            s = self.stats.setdefault(name, [0, 0.0, 0.0, 0])
            s[0] += 1
            s[1] += wall
            s[2] += cpu
            s[3] += items

    def wrap(self, dotted: str, items: Callable[..., int] | None = None) -> bool:
        import functools
        import importlib
        import inspect
        import sys

        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                owner: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:-1]:
                    owner = getattr(owner, attr)
                original = inspect.getattr_static(owner, parts[-1])
            except AttributeError:
                return False
            break
        else:
            return False
        if isinstance(original, staticmethod | classmethod):
            return False
        name = ".".join(parts[-2:])
        record = self._record

        @functools.wraps(original)
        def probe(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                record(
                    name,
                    time.perf_counter() - wall,
                    time.thread_time() - cpu,
                    items(*args, **kwargs) if items is not None else 0,
                )

        setattr(owner, parts[-1], probe)
        if inspect.ismodule(owner):
            for module in list(sys.modules.values()):
                if module is not owner and getattr(module, parts[-1], None) is original:
                    setattr(module, parts[-1], probe)
        return True

    def take(self) -> dict[str, list[float]]:
        with self._lock:
            out, self.stats = self.stats, {}
        return out


_IDLE_MARKS = (
    "sleep(",
    ".wait(",
    "select(",
    ".acquire(",
    ".get(",
    "poll(",
    "recv",
    "_wait",
    "with ",
)


class StackSampler:
    """Every `interval` s, the Python stack of every other thread, split into busy and idle.

    A thread whose innermost Python line is a sleep, wait, select, lock acquire (or `with` on a
    lock) or queue get is counted as idle (it is blocked in C); busy samples say where the
    GIL's time goes. Sampling itself costs CPU: compare profiled runs with each other.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self.busy: dict[str, int] = {}
        self.idle: dict[str, int] = {}
        self.samples = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def start(self) -> StackSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import linecache
        import sys

        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            try:
                self._sample(me, sys._current_frames(), linecache.getline)
            except Exception as exc:  # a profiler must not stop on one odd frame
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _sample(self, me: int, frames: dict[int, Any], getline: Callable[[str, int], str]) -> None:
        with self._lock:
            self.samples += 1
            for ident, frame in frames.items():
                if ident == me:
                    continue
                leaf = frame.f_code
                line = getline(leaf.co_filename, frame.f_lineno or 0)
                if any(m in line for m in _IDLE_MARKS):
                    # Idle threads are most of them: their innermost function is enough.
                    key = f"{Path(leaf.co_filename).stem}.{leaf.co_name}"
                    self.idle[key] = self.idle.get(key, 0) + 1
                    continue
                stack: list[str] = []
                f: Any = frame
                while f is not None:
                    code = f.f_code
                    stack.append(f"{Path(code.co_filename).stem}.{code.co_name}")
                    f = f.f_back
                key = ";".join(reversed(stack))
                self.busy[key] = self.busy.get(key, 0) + 1

    def take(self) -> dict[str, Any]:
        with self._lock:
            out = {
                "samples": self.samples,
                "interval": self.interval,
                "busy": self.busy,
                "idle": self.idle,
                "errors": self.errors[:5],
            }
            self.errors = []
            self.busy, self.idle, self.samples = {}, {}, 0
        return out


def top_functions(stacks: dict[str, int], n: int = 25) -> list[tuple[str, int, int]]:
    """(function, inclusive samples, self samples) of collapsed stacks, most inclusive first."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for stack, count in stacks.items():
        names = stack.split(";")
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + count
        own[names[-1]] = own.get(names[-1], 0) + count
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:n]
    return [(name, count, own.get(name, 0)) for name, count in ranked]
