"""ledger.key_filter: a key added is always "maybe"; an absent one is "no" but for a few."""

from __future__ import annotations

import hashlib

import pytest

from ledger.key_filter import KeyFilter


def _key(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()[:16]


def test_every_key_added_is_maybe_across_every_layer() -> None:
    f = KeyFilter(first_layer_keys=100)
    f.add_many(_key(i) for i in range(5000))
    f.add(b"")  # any bytes, the empty ones too
    assert f.layers == 6  # 100 + 200 + 400 + 800 + 1600 + 3200 >= 5001
    assert len(f) == 5001
    assert all(f.might_contain(_key(i)) for i in range(5000))
    assert f.might_contain(b"")


def test_absent_keys_are_mostly_ruled_out() -> None:
    f = KeyFilter(first_layer_keys=10_000)
    f.add_many(_key(i) for i in range(10_000))  # one full layer: its worst rate
    maybe = sum(f.might_contain(_key(i)) for i in range(10_000, 60_000))
    # 320,000 bits rounded up to 2**19, 52 a key: 0.017% expected with three probes (0.07% at
    # exactly 32 bits a key, as the server's layers have; 16 bits gave 0.56%).
    assert maybe < 0.002 * 50_000, maybe
    assert f.size_bytes == 64 * 1024


def test_an_empty_filter_rules_out_everything() -> None:
    f = KeyFilter(first_layer_keys=1)
    assert not any(f.might_contain(_key(i)) for i in range(1000))


@pytest.mark.parametrize(("first", "bits"), [(0, 16), (10, 0), (-1, 16)])
def test_a_filter_with_no_room_is_refused(first: int, bits: int) -> None:
    with pytest.raises(ValueError, match="expected both >= 1"):
        KeyFilter(first_layer_keys=first, bits_per_key=bits)
