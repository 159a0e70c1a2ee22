"""ledger.quick_init: every frozen dataclass given a quick __init__ builds what its own built.

Each class is built twice from the same arguments, by the quick __init__ and by the one
@dataclass generated (kept as __dataclass_init__): positionally, by keyword and with the
defaults left out. The two must hold the same fields and compare, hash and print alike; the
object stays frozen, and a wrong call fails as the generated one fails.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

import ledger.core
import ledger.formats
import ledger.model
import ledger.rules
import ledger.staging
import ledger.state
from ledger.quick_init import QUICK_CLASSES, quick_init

_MODULES = (ledger.core, ledger.formats, ledger.model, ledger.rules, ledger.staging, ledger.state)


def _by_dataclass(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
    obj = object.__new__(cls)
    cls.__dataclass_init__(obj, *args, **kwargs)
    return obj


def _ids(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_every_frozen_dataclass_of_the_hot_path_has_one() -> None:
    """A new frozen value class in these modules gets the quick __init__ too (or this fails):
    the ingest builds them per event."""
    frozen = {
        obj
        for module in _MODULES
        for obj in vars(module).values()
        if isinstance(obj, type)
        and obj.__module__ == module.__name__
        and dataclasses.is_dataclass(obj)
        and obj.__dataclass_params__.frozen  # type: ignore[attr-defined]
    }
    assert frozen and frozen <= set(QUICK_CLASSES), sorted(map(_ids, frozen - set(QUICK_CLASSES)))


@pytest.mark.parametrize("cls", QUICK_CLASSES, ids=_ids)
def test_the_quick_init_builds_what_the_dataclass_init_builds(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    values = [(f"value of {f.name}", i) for i, f in enumerate(fields)]  # hashable, distinct
    quick, slow = cls(*values), _by_dataclass(cls, *values)
    assert vars(quick) == vars(slow) == {f.name: v for f, v in zip(fields, values, strict=True)}
    assert quick == slow and hash(quick) == hash(slow) and repr(quick) == repr(slow)
    assert cls(**{f.name: v for f, v in zip(fields, values, strict=True)}) == slow
    assert pickle.loads(pickle.dumps(quick)) == slow
    required = [v for f, v in zip(fields, values, strict=True) if f.default is dataclasses.MISSING]
    assert vars(cls(*required)) == vars(_by_dataclass(cls, *required))  # the defaults
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(quick, fields[0].name, "changed")
    for call in (lambda: cls(*values, "one too many"), lambda: cls(no_such_field=1)):
        with pytest.raises(TypeError):
            call()
    if required:
        with pytest.raises(TypeError):
            cls(*required[:-1])


def test_a_class_it_cannot_copy_faithfully_is_refused() -> None:
    @dataclasses.dataclass
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    @dataclasses.dataclass(frozen=True)
    class KeywordOnly:
        a: int = dataclasses.field(kw_only=True)

    for cls in (Mutable, Checked, Factory, Slotted, KeywordOnly):
        with pytest.raises(TypeError, match=cls.__name__):
            quick_init(cls)
    assert not any(c in QUICK_CLASSES for c in (Mutable, Checked, Factory, Slotted, KeywordOnly))
