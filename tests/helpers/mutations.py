"""Hypothesis strategies that damage valid inputs a little: the fuzz tests' mutations."""

from __future__ import annotations

from hypothesis import strategies as st

ALL_OPS = ("flip", "truncate", "insert", "delete", "set", "splice")


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], ops: tuple[str, ...] = ALL_OPS) -> bytes:
    """One of ``seeds`` after 1-4 of ``ops``: flip a bit, truncate, insert or delete up to 16
    bytes, set a byte to a boundary value, or splice in the tail of another seed."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(ops))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "set" and data:
            data[at] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF)))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)
