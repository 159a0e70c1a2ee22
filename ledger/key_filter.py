"""Which keys are certainly absent from a set kept on disk: a Bloom filter that grows by layers.

A server looks up the event id of every submitted event in its per-entry index on disk
(ledger.spilled_index) twice, and the answer is nearly always "not there": a new event. Each of
those lookups is an SQLite query (6 µs at 200,000 keys, more as the table outgrows the page
cache). The filter answers most of them from memory: ``might_contain`` is False only for keys
never added, so a False skips the query and a True (an added key, or a false positive) asks
the table as before. It never changes an answer, only what it costs.

Layers, not one array resized: a Bloom filter cannot be rebuilt without its keys, and reading
them back from the table would stall the fold for seconds at ten million entries. Each new
layer holds twice the keys of the one before, so ten million keys from a first layer of 2**20
take four layers (60 MiB at 32 bits a key).

Why 32 bits a key, not 16: a key is ruled out only if every layer rules it out, so the layers'
false positives add up, and each one is a query into a table of millions of keys, made under
the fold lock, that lets go of the interpreter lock and waits to get it back. At ten million
keys, 16 bits gave 1.49% "maybe" for absent keys and 32 gives 0.23% (300,000 random keys,
2026-12-07), for 30 MiB more and the same cost a lookup (three probes either way: 1.27 and
1.29 µs). In bench.ingest's profile after a ten-million-event history, those queries were a
fifth of the server's busy samples (18.8%, in existing_receipt's lookup of the new event id).

The probes come from Python's hash of the key, which is keyed per process (SipHash, randomised
at start): a client choosing event ids cannot aim them at set bits ahead of time, and one that
found a false positive anyway only costs the query every lookup cost before.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["BITS_PER_KEY", "FIRST_LAYER_KEYS", "KeyFilter"]

FIRST_LAYER_KEYS = 1 << 20
"""Keys the first layer is sized for (4 MiB of bits); each later layer doubles."""

BITS_PER_KEY = 32
"""With three probes a full layer answers "maybe" for 0.07% of absent keys (16 bits: 0.56%)."""

_PROBES = 3
_U64 = (1 << 64) - 1


class _Layer:
    __slots__ = ("bits", "capacity", "count", "mask")

    def __init__(self, capacity: int, bits_per_key: int) -> None:
        size = 8
        while size < capacity * bits_per_key:
            size <<= 1
        self.bits = bytearray(size >> 3)
        self.mask = size - 1
        self.capacity = capacity
        self.count = 0


class KeyFilter:
    """``add`` keys; ``might_contain(key)`` is False only for a key never added."""

    def __init__(
        self, first_layer_keys: int = FIRST_LAYER_KEYS, bits_per_key: int = BITS_PER_KEY
    ) -> None:
        if first_layer_keys < 1 or bits_per_key < 1:
            raise ValueError(
                f"first_layer_keys {first_layer_keys} and bits_per_key {bits_per_key}, "
                "expected both >= 1"
            )
        self._bits_per_key = bits_per_key
        self._layers = [_Layer(first_layer_keys, bits_per_key)]

    def __len__(self) -> int:
        """Keys added (a key added twice counts twice)."""
        return sum(layer.count for layer in self._layers)

    @property
    def layers(self) -> int:
        return len(self._layers)

    @property
    def size_bytes(self) -> int:
        return sum(len(layer.bits) for layer in self._layers)

    def add(self, key: bytes) -> None:
        self.add_many((key,))

    def add_many(self, keys: Iterable[bytes]) -> None:
        layer = self._layers[-1]
        bits, mask = layer.bits, layer.mask
        for key in keys:
            if layer.count >= layer.capacity:
                layer = _Layer(layer.capacity * 2, self._bits_per_key)
                self._layers.append(layer)
                bits, mask = layer.bits, layer.mask
            h = hash(key) & _U64
            step = (h >> 32) | 1  # odd: the three probes are distinct in a power-of-two array
            at = h
            for _ in range(_PROBES):
                p = at & mask
                bits[p >> 3] |= 1 << (p & 7)
                at += step
            layer.count += 1

    def might_contain(self, key: bytes) -> bool:
        h = hash(key) & _U64
        step = (h >> 32) | 1
        for layer in self._layers:
            bits, mask = layer.bits, layer.mask
            p = h & mask
            if not bits[p >> 3] >> (p & 7) & 1:
                continue
            p = (h + step) & mask
            if not bits[p >> 3] >> (p & 7) & 1:
                continue
            p = (h + 2 * step) & mask
            if bits[p >> 3] >> (p & 7) & 1:
                return True
        return False
