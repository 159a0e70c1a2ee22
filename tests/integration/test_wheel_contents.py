"""The wheel is the image's file set (k8s/Dockerfile installs it and nothing else), so what it
lacks, every container lacks: the generated gRPC package ``steward/``, the schemas, the KWOK
stages, a console script. The built wheel has them all; a wheel stripped of each is caught.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.helpers.wheel_env import WheelEnvironment, installed_wheel, wheel_problems


@pytest.fixture(scope="module")
def wheel() -> WheelEnvironment:
    return installed_wheel()


def test_the_built_wheel_has_everything_the_programs_need(wheel: WheelEnvironment) -> None:
    assert wheel_problems(wheel.wheel) == []


def _without(source: Path, target: Path, drop: str, entry_point: str) -> Path:
    """A copy of the wheel without the members under ``drop`` and without one console script."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            if item.filename.startswith(drop):
                continue
            data = src.read(item)
            if item.filename.endswith("entry_points.txt"):
                data = b"\n".join(
                    line for line in data.splitlines() if not line.startswith(entry_point.encode())
                )
            dst.writestr(item, data)
    return target


@pytest.mark.parametrize(
    ("drop", "problem"),
    [("steward/", "missing steward/"), ("ledger/schemas/", "missing ledger/schemas/")],
)
def test_a_wheel_missing_a_package_or_a_script_is_caught(
    wheel: WheelEnvironment, tmp_path: Path, drop: str, problem: str
) -> None:
    stripped = _without(wheel.wheel, tmp_path / wheel.wheel.name, drop, "steward-controller ")
    problems = wheel_problems(stripped)
    assert any(p.startswith(problem) for p in problems), problems
    assert any(p.startswith("no console script steward-controller =") for p in problems), problems
