"""Writing on a full disk, a read-only file system or without permission: one line naming the path the user
asked for, the cause and the fix; nothing half-written; checked up front where the size is known.

The machine's refusals are simulated where the OS raises them (tempfile, os.fsync): a read-only bind mount
or a full tmpfs needs root, and root ignores chmod. bench/bench_faults.py runs the same on a real tmpfs.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.cli import main
from ditf_runtime.errors import OutputError
from ditf_runtime.files import staged_folder, write_bytes_atomic
from PIL import Image


def _read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", os.path.join(kwargs.get("dir") or ".", ".x.tmp-abc123"))


def _images(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40 + i, 56, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def _one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_match_out_in_a_read_only_folder_names_the_picture_not_its_temporary_file(export_dir, tmp_path,
                                                                                  monkeypatch):
    images = _images(tmp_path / "in", 2)
    monkeypatch.setattr(tempfile, "mkstemp", _read_only)
    result = CliRunner().invoke(main, ["match", str(images / "img00.png"), str(images / "img01.png"), "--model",
                                       str(export_dir), "--out", str(tmp_path / "m.png"), "--points", "5,5"])
    line = _one_line_error(result)
    assert f"cannot write {tmp_path / 'm.png'}: {tmp_path} is on a read-only file system" in line, line
    assert "choose a writable folder" in line and ".tmp" not in line


def test_extract_on_a_disk_that_fills_up_names_the_file_and_resumes(export_dir, tmp_path, monkeypatch):
    images = _images(tmp_path / "in", 6)
    out = tmp_path / "out"
    real_fsync = os.fsync

    def fsync_until_full(fd):  # the disk fills up at the third image's feature file
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".img") and int(name[4:6]) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    args = ["extract", str(images), "--model", str(export_dir), "--out", str(out)]
    line = _one_line_error(CliRunner().invoke(main, args))
    assert f"cannot write {out / 'img02.safetensors'}: the disk is full" in line, line
    assert "2 of 6 file(s) were written before that, each complete: free some space, then rerun the same command " \
        "to resume" in line
    assert sorted(p.name for p in out.iterdir()) == ["ditf-extract.json", "img00.safetensors", "img01.safetensors"]

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the same command resumes
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "6 image(s), 2 already done, 4 to extract" in result.output, result.output
    fresh = tmp_path / "fresh"
    assert CliRunner().invoke(main, [*args[:-1], str(fresh)]).exit_code == 0
    for path in sorted(fresh.glob("*.safetensors")):
        assert (out / path.name).read_bytes() == path.read_bytes()  # bit-identical to an uninterrupted run


def test_extract_refuses_up_front_when_the_feature_files_cannot_fit(export_dir, tmp_path, monkeypatch):
    images = _images(tmp_path / "in", 6)
    out = tmp_path / "out"
    monkeypatch.setattr("ditf_runtime.jobs.free_bytes", lambda path: 20_000)
    monkeypatch.setattr("ditf_runtime.files.free_bytes", lambda path: 20_000)
    line = _one_line_error(CliRunner().invoke(main, ["extract", str(images), "--model", str(export_dir), "--out",
                                                     str(out)]))
    assert f"cannot write {out}: 6 feature file(s) needs about" in line and "MiB free" in line, line
    assert "choose another --out" in line
    assert not out.exists()  # refused before the folder or its run record


def test_export_to_a_read_only_place_is_refused_before_any_work(tmp_path, monkeypatch):
    from ditf_export.cli import main as export_main

    monkeypatch.setattr(tempfile, "mkdtemp", _read_only)
    start = time.monotonic()
    result = CliRunner().invoke(export_main, ["--model", "flux-tiny", "--out", str(tmp_path / "exp")])
    line = _one_line_error(result)
    assert time.monotonic() - start < 10, "refused after the work, not before"
    assert f"cannot write {tmp_path / 'exp'}: {tmp_path} is on a read-only file system; choose another --out" \
        in line, line


def test_a_full_disk_during_a_staged_folder_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    """onnx's external-data writer fails with numpy's errno-less 'problem writing element N to file': judged a
    full disk by the free space left, measured before the half-written folder is removed."""
    monkeypatch.setattr("ditf_runtime.files.free_bytes", lambda path: 4096)
    with pytest.raises(OutputError, match=r"cannot write .*exp: the disk is full") as caught:
        with staged_folder(tmp_path / "exp") as tmp:
            (tmp / "model.onnx.data").write_bytes(b"x" * 100)
            raise OSError("problem writing element 2048 to file")
    assert "free some space" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # no partial folder


def test_write_bytes_atomic_names_the_target_and_cleans_up(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'f.bin'}: the disk is full") as caught:
        write_bytes_atomic(tmp_path / "f.bin", b"data")
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
