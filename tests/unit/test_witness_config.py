"""The ledger's witness configuration: ``--witness NAME=URL,VKEY`` and the threshold, through
the one parser ``steward serve`` and ``python -m ledger.server`` share."""

from __future__ import annotations

import argparse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.cosignature import WitnessKey
from ledger.errors import ConfigError
from ledger.server_flags import add_server_arguments
from ledger.witness import WitnessEndpoint, WitnessPolicy


def _vkey(name: str) -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return WitnessKey(name, raw).vkey


def test_the_flags_parse_into_endpoints() -> None:
    p = argparse.ArgumentParser()
    add_server_arguments(p)
    v1, v2 = _vkey("witness.example/w1"), _vkey("witness.example/w2")
    flags = ["--witness", f"w1=http://127.0.0.1:7380/,{v1}"]
    flags += ["--witness", f"w2=https://w2.example/prefix,{v2}", "--witness-threshold", "1"]
    args = p.parse_args(["--db", "x.db", "--checkpoint-key", "k.pem", *flags])
    endpoints = [WitnessEndpoint.parse(w) for w in args.witness]
    assert [(e.label, e.url, e.key.vkey) for e in endpoints] == [
        ("w1", "http://127.0.0.1:7380", v1),
        ("w2", "https://w2.example/prefix", v2),
    ]
    assert WitnessPolicy(tuple(endpoints), args.witness_threshold).required == 1
    assert WitnessPolicy(tuple(endpoints)).required == 2  # default: every witness


@pytest.mark.parametrize(
    "flag",
    [
        "w1",
        "w1=http://127.0.0.1:7380",
        "w1=ftp://127.0.0.1:7380,{vkey}",
        "=http://127.0.0.1:7380,{vkey}",
        "w1=http://127.0.0.1:7380,example.org/log+00000000+AQ==",
    ],
)
def test_a_malformed_witness_flag_is_a_config_error(flag: str) -> None:
    with pytest.raises(ConfigError):
        WitnessEndpoint.parse(flag.format(vkey=_vkey("witness.example/w1")))


def test_a_threshold_beyond_the_witnesses_or_a_witness_named_twice_is_refused() -> None:
    w = WitnessEndpoint.parse(f"w1=http://127.0.0.1:1,{_vkey('witness.example/w1')}")
    with pytest.raises(ConfigError):
        WitnessPolicy((w,), threshold=2)
    with pytest.raises(ConfigError):
        WitnessPolicy((w, w))
