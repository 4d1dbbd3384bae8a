"""ditf_runtime.files.staged_folder: the one way exports, tiny models, engines, Triton repositories and the
benchmarks' cached models are put in place. A folder at the destination is either the old one or the new
complete one, never a half-written one; nothing temporary is left behind."""

from __future__ import annotations

import os

import pytest
from ditf_runtime import files
from ditf_runtime.files import staged_folder


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}


def test_a_finished_folder_replaces_the_old_one_and_nothing_else_remains(tmp_path):
    out = tmp_path / "deep" / "out"
    with staged_folder(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".") and not any(tmp.iterdir())
        assert not out.exists()  # nothing at the destination while it is being written
        (tmp / "a.txt").write_text("first")
    assert _tree(out) == {"a.txt": "first"} and oct(out.stat().st_mode & 0o777) == "0o755"
    with staged_folder(out) as tmp:
        (tmp / "b.txt").write_text("second")
        assert _tree(out) == {"a.txt": "first"}  # the old folder stays until the new one is complete
    assert _tree(out) == {"b.txt": "second"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_a_failed_block_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert _tree(out) == {"keep.txt": "mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    real_replace = os.replace

    def refuse_the_new_folder(src, dst):
        if os.fspath(src).endswith(tuple(p.name for p in tmp_path.glob(".out.tmp-*"))):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", refuse_the_new_folder)
    with pytest.raises(OSError, match="cannot write .*out: the disk is full"):  # an OutputError
        with staged_folder(out) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _tree(out) == {"keep.txt": "mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
