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

    def add(self, metric: str, value: float, unit: str, goal: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(metric, value, unit, goal, met))

    def emit(self) -> None:
        width = max(len(r.metric) for r in self.rows)
        print(f"\n{self.bench}  ({', '.join(f'{k}={v}' for k, v in self.params.items())})")
        for r in self.rows:
            verdict = "" if r.met is None else ("  ✓ goal met" if r.met else "  ✗ goal missed")
            goal = f"  (goal {r.goal})" if r.goal else ""
            print(f"  {r.metric:<{width}}  {r.value:>14,.3f} {r.unit}{goal}{verdict}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        doc = {"bench": self.bench, "params": self.params, "machine": machine(),
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": [asdict(r) for r in self.rows]}
        out = RESULTS / f"{self.bench}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"  → {out}")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


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
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs (CI)")
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
