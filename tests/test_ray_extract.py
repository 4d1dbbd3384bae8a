"""`ditf extract --ray` on a local Ray (2 CPUs): the plain runtime's outputs, and resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.cli import main
from ditf_runtime.jobs import RUN_RECORD
from ditf_runtime.storage import load_features
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ditf-runtime[ray]')")
from ditf_runtime.ray_extract import extract_with_ray

N_IMAGES = 12


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray_images")
    (folder / "sub").mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        size = (40 + 7 * (i % 4), 50 + 9 * (i % 3))
        target = folder / ("sub" if i % 5 == 4 else "") / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(target)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def plain(export_dir, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "out"
    result = CliRunner().invoke(main, ["extract", str(images), "--model", str(export_dir), "--out", str(out)])
    assert result.exit_code == 1 and "1 of 13 image(s) could not be read" in result.output, result.output
    return out


def outputs(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*.safetensors"))


def metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return handle.metadata()


def assert_same_outputs(out, plain):
    assert outputs(out) == outputs(plain) and len(outputs(out)) == N_IMAGES
    for rel in outputs(plain):
        a, b = load_features(out / rel), load_features(plain / rel)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert (a.image_size, a.input_size, a.stride) == (b.image_size, b.input_size, b.stride)
        assert metadata(out / rel) == metadata(plain / rel)  # same format, same recorded settings
    assert json.loads((out / RUN_RECORD).read_text()) == json.loads((plain / RUN_RECORD).read_text())


def test_ray_extraction_equals_the_plain_runtime_and_resumes(local_ray, export_dir, images, plain, tmp_path):
    out = tmp_path / "out"
    finished = []

    def interrupt_after_three(output, status, message):
        finished.append((output, status))
        if len(finished) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the driver, mid-run

    with pytest.raises(KeyboardInterrupt):
        extract_with_ray([images], export_dir, out, workers=1, progress=interrupt_after_three)
    first = outputs(out)
    assert len(first) >= 2  # what was written before the interrupt is there, complete (checked below)
    assert [p.name for p in out.rglob("*") if p.is_file() and p.suffix not in (".safetensors", ".json")] == []
    if len(first) == N_IMAGES:
        # Ray's streaming executor runs actors ahead of the driver, so on a fast machine every image can
        # be written before the Ctrl-C lands; drop the last few so the rerun really has work left.
        for rel in first[N_IMAGES // 2:]:
            (out / rel).unlink()
        first = outputs(out)
    assert len(first) < N_IMAGES
    stamps = {rel: (out / rel).stat().st_mtime_ns for rel in first}

    report = extract_with_ray([images], export_dir, out, workers=2)
    assert (report.total, report.skipped, report.written) == (N_IMAGES + 1, len(first), N_IMAGES - len(first))
    assert len(report.failed) == 1 and "broken.png" in report.failed[0]
    assert {rel: (out / rel).stat().st_mtime_ns for rel in first} == stamps  # done work is not redone
    assert_same_outputs(out, plain)

    again = extract_with_ray([images], export_dir, out, workers=2)
    assert (again.skipped, again.written) == (N_IMAGES, 0)


def test_cli_extract_ray(local_ray, export_dir, images, plain, tmp_path):
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["extract", str(images), "--model", str(export_dir), "--out", str(out), "--ray", "--workers", "2"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "1 of 13 image(s) could not be read" in result.output, result.output
    assert "Traceback" not in result.output
    assert_same_outputs(out, plain)
    # The plain command resumes a --ray folder (same run record) and finds nothing to do.
    resumed = runner.invoke(main, ["extract", str(images), "--model", str(export_dir), "--out", str(out)])
    assert "12 already done, 1 to extract" in resumed.output


def test_cli_joins_a_running_ray_by_address(local_ray, export_dir, images, plain, tmp_path):
    """A separate driver process joins the running (local) cluster with --ray-address, as on a cluster."""
    import subprocess
    import sys

    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ditf_runtime.cli", "extract", str(images), "--model", str(export_dir),
               "--out", str(out), "--ray", "--ray-address", address, "--workers", "2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1 and "1 of 13 image(s) could not be read" in result.stderr, result.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in result.stderr
    assert_same_outputs(out, plain)
