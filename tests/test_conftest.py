"""The test session cleans up after itself: the built-in model cache it makes lives only as long as the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_test_run_leaves_no_model_cache_behind(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DITF_CACHE"}
    env["TMPDIR"] = str(tmp_path)
    tests = Path(__file__).resolve().parent
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tests / "test_runtime_progress.py")], capture_output=True, text=True, timeout=120,
                         env=env, cwd=tests.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    assert list(tmp_path.glob("ditf-cache-*")) == []


def test_manifest_errors_are_ditf_errors():
    from ditf_runtime import DitfError, ManifestError

    assert issubclass(ManifestError, DitfError)  # `except DitfError` catches a bad export folder too
