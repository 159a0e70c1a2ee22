"""The Go tool cache keys a project Go program by its sources: an edit rebuilds, nothing else does."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.go_tools import TOOLS, GoToolError, _tree_hash, tool_path


def _module(root: Path) -> Path:
    (root / "go.mod").write_text("module example.test/x\n\ngo 1.22\n")
    (root / "main.go").write_text("package main\n\nfunc main() {}\n")
    return root


def test_an_edit_to_a_go_file_changes_the_key_and_other_files_do_not(tmp_path: Path) -> None:
    src = _module(tmp_path)
    before = _tree_hash(src)
    (src / "notes.log").write_text("build output is not a source")
    assert _tree_hash(src) == before
    (src / "main.go").write_text("package main\n\nfunc main() { println() }\n")
    assert _tree_hash(src) != before


def test_a_directory_without_go_mod_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(GoToolError, match=r"no go\.mod"):
        _tree_hash(tmp_path)


def test_pinned_tools_live_under_their_version() -> None:
    for name, tool in TOOLS.items():
        assert tool_path(name).parent.name == f"{name}@{tool.version}"
    with pytest.raises(GoToolError, match="known: litewitness, witnessctl"):
        tool_path("nope")
