"""`steward policy set FILE`'s reader: the schema v3 parts (traffic, notify) as docs/GOVERNANCE.md
shows them, and errors that name the field for what a person gets wrong in them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.cli.common import CliError
from ledger.cli.governance import load_policy
from ledger.delivery import delivery_problem
from ledger.formats import TrafficRouting

REPO = Path(__file__).resolve().parents[2]

BASE = """\
id: p
selector: {namespace: models, deployment: model-server}
approvals: {required: 2, kinds: [human]}
plan:
  - {weight: 10, hold_seconds: 60}
  - {weight: 100, hold_seconds: 0}
"""


def documented_parts() -> str:
    """The second YAML block of GOVERNANCE's "Policy files": traffic and notify."""
    text = (REPO / "docs" / "GOVERNANCE.md").read_text().split("## Policy files", 1)[1]
    return text.split("```yaml\n")[2].split("```", 1)[0]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_the_documented_traffic_and_notify_parts_are_read_into_the_policy(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, BASE + documented_parts()))
    assert policy.traffic == TrafficRouting(
        "model-server", "model-server-stable", "model-server-canary", 8080
    )
    assert policy.notify == ("https://hooks.example.org/steward/models",)
    assert delivery_problem(policy) is None


def test_without_them_the_policy_is_in_replica_mode_and_tells_no_one(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, BASE))
    assert policy.traffic is None and policy.notify == ()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("traffic: model-server\n", "traffic: expected a mapping"),
        (
            "traffic: {http_route: r, stable_service: s, canary_service: c}\n",
            "traffic.port is required",
        ),
        (
            "traffic: {stable_service: s, canary_service: c, port: 80}\n",
            "traffic.http_route is required",
        ),
        (
            "traffic: {http_route: r, stable_service: s, canary_service: c, port: eighty}\n",
            "eighty",
        ),
        ("notify: https://hooks.example.org/x\n", "notify: expected a list of webhook URLs"),
    ],
)
def test_a_malformed_part_is_an_error_naming_it(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(CliError, match=expected):
        load_policy(write(tmp_path, BASE + extra))


def test_values_the_reader_passes_are_judged_by_the_rules_naming_the_field(tmp_path: Path) -> None:
    bad_port = load_policy(
        write(
            tmp_path,
            BASE + "traffic: {http_route: r, stable_service: s, canary_service: c, port: 0}\n",
        )
    )
    found = delivery_problem(bad_port)
    assert found is not None and found[0] == "payload.traffic.port"
    with_password = load_policy(
        write(tmp_path, BASE + "notify: [https://u:secret@hooks.example.org/x]\n")
    )
    found = delivery_problem(with_password)
    assert found is not None and found[0] == "payload.notify[0]"
