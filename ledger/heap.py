"""Python's cyclic garbage collector, tuned for a long-running Steward process.

The ledger server's core and the controller's state keep a few objects per log entry for the
life of the process, so nearly every object an append or a replayed entry allocates survives,
and the collector scans it again in each generation; a full collection rescans all of them.
Measured (docs/PERFORMANCE.md): in the ledger server under AppendStream load at 20,000-40,000
entries the default thresholds cost 45-64 µs of pauses per event, a quarter of its CPU; in the
controller's cold replay of 200,000 entries 9.8 s of 40.9 s, with pauses up to 355 ms, and a
full collection grows with the log (seconds at a million entries, during which nothing else
runs: a kill switch would wait). So, for the process entry points only (never in a library
call, since it is process-wide):

- `tune_collector()` before loading: young collections every 50,000 allocations instead of
  700 (a middle generation every 2), and after each full collection `gc.freeze()`: frozen
  objects are never scanned again (reference counting still frees them), so a long-lived
  object is scanned by a full collection about once;
- `settle_heap()` once loaded: everything alive is frozen. Without a collection first: at a
  million entries that collection alone was a 1 s pause, in a restart that must act within 2 s.

The cost: a cycle frozen while alive is never collected if it becomes garbage later. Right
after a full collection (or the load) that is only what is in flight then (and the load's
own few garbage cycles), a bounded amount; and cyclic garbage waits longer (50,000
allocations) before it is freed.

- `settling_collector()` for a bounded stretch right after the load in which the process
  builds much more long-lived state (the controller's first views pass after a restart, which
  decodes every restored proposal): smaller generations, a full collection every second
  middle one, so that each pause scans a small batch. Then `tune_collector()` again. Measured
  with bench.replay at ten million entries: a full collection during that pass stopped every
  thread for 965 ms with the thresholds above (a pause follows each young object's references
  into a heap of gigabytes); with these, 87.6 ms. Not the steady state: each full
  collection freezes, and freezing ten times as often would catch ten times as many cycles
  in flight.
- `freeze_survivors()` between the holds of a stretch whose objects all live until it ends
  (the controller's base snapshot part), so that no collection inside a later hold scans them;
  a no-op unless the process tuned the collector.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
# While settling: a young collection every 5,000 allocations, a full one every second middle
# one (each freezes what survived). bench.replay at a million entries, the first views pass
# after a restart (2026-12-06, one run each): with 50,000 / 2 / 10 (beside a CI run) its
# longest pause was a 67 ms middle collection; 20,000: a 62.8 ms full one, pass 3.54 s;
# 10,000: 29.4 ms, 3.41 s; 5,000: 14.2 ms, 3.40 s (172 pauses). Smaller batches cost no more in all: each object is
# still scanned about once per generation, and a small batch stays in the processor's cache.
SETTLING_THRESHOLDS = (5_000, 2, 1)


def tune_collector() -> None:
    """Rarer young collections; survivors of a full collection frozen. Idempotent."""
    gc.set_threshold(YOUNG_THRESHOLD, 2, 10)
    if _freeze_after_full_collection not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full_collection)


def settling_collector() -> None:
    """Small, frequent collections for a bounded stretch of long-lived allocation (the module
    says when); `tune_collector()` ends it."""
    tune_collector()
    gc.set_threshold(*SETTLING_THRESHOLDS)


def settle_heap() -> None:
    """Once the long-lived state is loaded: freeze what is alive (O(1)), tune."""
    gc.freeze()
    tune_collector()


def _freeze_after_full_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def freeze_survivors() -> None:
    """In a process that tuned the collector (`tune_collector`), freeze what is alive now;
    elsewhere nothing. For a stretch that builds many objects which all live until it ends
    (the controller's base snapshot part, encoded a few proposals per hold of the fold lock):
    frozen between holds, none of them is scanned by a collection that would otherwise fall
    inside a later hold. bench.replay at a million entries (2026-12-07): a step's longest
    hold 61.4 ms (a middle collection of 57.9 ms inside it), 6.0 ms freezing after each step.
    Frees nothing: they are freed by their reference counts, as everything frozen is."""
    if _freeze_after_full_collection in gc.callbacks:
        gc.freeze()
