"""`ditf` commands: outputs, resumption after a crash, and clear refusals (exit != 0, no traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime import storage
from ditf_runtime.annotate import MIN_PICTURE_WIDTH
from ditf_runtime.cli import main
from ditf_runtime.manifest import MODEL_DATA_FILE
from ditf_runtime.storage import load_features
from PIL import Image


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, (h, w) in enumerate([(50, 70), (64, 48), (40, 40), (30, 90), (45, 60)]):
        target = folder / ("sub" if index == 4 else "") / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(target)
    return folder


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    # A user error must never show a traceback: click prints "Error: ..." and exits 1 or 2.
    assert "Traceback" not in result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def outputs(folder: Path, suffix=".safetensors"):
    return sorted(p.relative_to(folder) for p in folder.rglob(f"*{suffix}"))


def test_extract_folder_writes_features_with_geometry(export_dir, images, tmp_path):
    out = tmp_path / "out"
    result = invoke("extract", images, "--model", export_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert outputs(out) == [Path(f"img{i}.safetensors") for i in range(4)] + [Path("sub/img4.safetensors")]
    fm = load_features(out / "img0.safetensors")
    assert fm.image_size == (50, 70) and fm.input_size == (48, 64) and fm.stride == 16
    assert fm.shape == (1, 32, 3, 4)
    again = invoke("extract", images, "--model", export_dir, "--out", out)
    assert again.exit_code == 0 and "5 already done, 0 to extract" in again.output


def test_extract_npy_format(export_dir, images, tmp_path):
    out = tmp_path / "npy"
    assert invoke("extract", images / "img1.png", "--model", export_dir, "--out", out, "--format", "npy").exit_code == 0
    fm = load_features(out / "img1.npy")
    assert fm.image_size == (64, 48) and np.asarray(fm).shape == (1, 32, 4, 3)


def test_extract_resumes_after_a_crash_and_loses_nothing(export_dir, images, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert invoke("extract", images, "--model", export_dir, "--out", reference).exit_code == 0

    out = tmp_path / "crashed"
    real_write = storage.write_bytes_atomic
    calls = []

    def crash_on_third(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user's Ctrl-C mid-run
        return real_write(path, data)

    monkeypatch.setattr(storage, "write_bytes_atomic", crash_on_third)
    crashed = invoke("extract", images, "--model", export_dir, "--out", out)
    assert crashed.exit_code != 0
    monkeypatch.setattr(storage, "write_bytes_atomic", real_write)
    done = outputs(out)
    assert len(done) == 2
    before = {p: (out / p).stat().st_mtime_ns for p in done}

    resumed = invoke("extract", images, "--model", export_dir, "--out", out)
    assert resumed.exit_code == 0 and "2 already done, 3 to extract" in resumed.output
    assert outputs(out) == outputs(reference)
    assert all((out / p).stat().st_mtime_ns == t for p, t in before.items())  # not redone
    for name in outputs(reference):
        assert np.array_equal(np.asarray(load_features(out / name)), np.asarray(load_features(reference / name)))


def test_extract_killed_process_resumes(export_dir, images, tmp_path):
    """SIGKILL in the middle of writing the third file: a temp file may remain, never a partial output."""
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from ditf_runtime import storage
        from ditf_runtime.cli import main
        real = storage.write_bytes_atomic
        count = []
        def write(path, data):
            count.append(path)
            if len(count) == 3:
                tmp = path.parent / ('.' + path.name + '.partial.tmp')
                tmp.write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, data)
        storage.write_bytes_atomic = write
        sys.argv = ['ditf', 'extract', {str(images)!r}, '--model', {str(export_dir)!r}, '--out', {str(out)!r}]
        main()
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert len(outputs(out)) == 2
    resumed = invoke("extract", images, "--model", export_dir, "--out", out)
    assert resumed.exit_code == 0, resumed.output
    assert len(outputs(out)) == 5
    for name in outputs(out):
        load_features(out / name)  # every output complete and readable


def test_extract_reports_unreadable_images_and_keeps_the_rest(export_dir, images, tmp_path):
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    result = invoke("extract", images, "--model", export_dir, "--out", out, "--batch-size", "2")
    assert result.exit_code == 1
    assert "broken.jpg" in result.output and "1 of 6 image(s) could not be read" in result.output
    assert len(outputs(out)) == 5


def test_extract_refuses_to_mix_settings(export_dir, images, tmp_path):
    out = tmp_path / "out"
    assert invoke("extract", images / "img0.png", "--model", export_dir, "--out", out).exit_code == 0
    result = invoke("extract", images / "img1.png", "--model", export_dir, "--out", out, "--seed", "5")
    assert result.exit_code == 1 and "differs in seed" in result.output
    assert (
        invoke(
            "extract", images / "img1.png", "--model", export_dir, "--out", out, "--seed", "5", "--overwrite"
        ).exit_code
        == 0
    )


def test_bad_model_folders_fail_cleanly(export_dir, images, tmp_path):
    missing = invoke("extract", images, "--model", tmp_path / "nothing", "--out", tmp_path / "o")
    assert missing.exit_code == 1 and "not a finished ditf export" in missing.output
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for item in export_dir.iterdir():
        (tampered / item.name).write_bytes(item.read_bytes())
    data = bytearray((tampered / MODEL_DATA_FILE).read_bytes())
    data[0] ^= 1
    (tampered / MODEL_DATA_FILE).write_bytes(bytes(data))
    result = invoke("extract", images, "--model", tampered, "--out", tmp_path / "o2")
    assert result.exit_code == 1 and "does not match the manifest" in result.output
    nothing = invoke("extract", tmp_path / "no-such-dir", "--model", export_dir, "--out", tmp_path / "o3")
    assert nothing.exit_code == 1 and "no such file or folder" in nothing.output


def test_match_points_and_picture(export_dir, images, tmp_path):
    picture = tmp_path / "match.png"
    result = invoke(
        "match",
        images / "img0.png",
        images / "sub" / "img4.png",
        "--model",
        export_dir,
        "--points",
        "3,4 60,40",
        "--out",
        picture,
        "--json",
        "-",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.split("\n2 matches")[0])  # '--json -': the JSON on stdout, then the summary
    assert [m["source"] for m in report["matches"]] == [[3, 4], [60, 40]]
    assert all(0 <= m["target"][0] < 60 and 0 <= m["target"][1] < 45 for m in report["matches"])
    width, height = Image.open(picture).size
    # the images side by side (small ones enlarged to the minimum picture width), a colour bar and caption below
    assert abs(width - MIN_PICTURE_WIDTH) <= 1 and height > 50
    quiet = invoke("match", images / "img0.png", images / "sub" / "img4.png", "--model", export_dir, "--points",
                   "3,4 60,40", "--out", picture)
    # With a picture and no --json: one summary line, not the JSON
    assert quiet.stdout.startswith("2 matches, cosine ") and quiet.stdout.count("\n") == 1, quiet.stdout
    assert f"wrote {picture}" in quiet.stdout


def test_match_mutual_neighbours_to_json(export_dir, images, tmp_path):
    target = tmp_path / "m.json"
    result = invoke(
        "match", images / "img0.png", images / "img0.png", "--model", export_dir, "--json", target, "--max-matches", "5"
    )
    assert result.exit_code == 0, result.output
    matches = json.loads(target.read_text())["matches"]
    assert 1 <= len(matches) <= 5
    # An image matched with itself: cosine 1 everywhere (the point itself, or an equal vector
    # earlier in the clamped border band, which argmax prefers).
    assert all(m["cosine"] == pytest.approx(1.0) for m in matches)


def test_match_bad_points(export_dir, images):
    result = invoke("match", images / "img0.png", images / "img1.png", "--model", export_dir, "--points", "1;2;x")
    assert result.exit_code == 1 and "points must be" in result.output
    outside = invoke("match", images / "img0.png", images / "img1.png", "--model", export_dir, "--points", "500,1")
    assert outside.exit_code == 1 and "outside" in outside.output


def _tiny_spair(root: Path) -> None:
    rng = np.random.default_rng(1)
    for index in range(2):
        folder = root / "JPEGImages" / "bird"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"s{index}.jpg")
        Image.fromarray(pixels[:, ::-1]).save(folder / f"t{index}.jpg")
        annotations = root / "PairAnnotation" / "test"
        annotations.mkdir(parents=True, exist_ok=True)
        (annotations / f"{index}:bird.json").write_text(
            json.dumps(
                {
                    "src_imname": f"s{index}.jpg",
                    "trg_imname": f"t{index}.jpg",
                    "category": "bird",
                    "src_kps": [[5, 5], [30, 20]],
                    "trg_kps": [[50, 5], [25, 20]],
                    "trg_bndbox": [0, 0, 56, 40],
                }
            )
        )


def test_eval_spair(export_dir, tmp_path):
    _tiny_spair(tmp_path / "spair")
    json_path = tmp_path / "pck.json"
    result = invoke("eval-spair", tmp_path / "spair", "--model", export_dir, "--json", json_path)
    assert result.exit_code == 0, result.output
    assert "bird" in result.output and "Mean" in result.output
    stats = json.loads(json_path.read_text())
    assert stats["pairs"] == 2 and 0 <= stats["image"]["All"] <= 1
    failing = invoke("eval-spair", tmp_path / "spair", "--model", export_dir, "--min-pck", "1.0")
    assert failing.exit_code == (0 if stats["image"]["All"] == 1.0 else 1)
    missing = invoke("eval-spair", tmp_path, "--model", export_dir)
    assert missing.exit_code == 1 and "PairAnnotation" in missing.output


def test_show_image_and_feature_file(export_dir, images, tmp_path):
    picture = tmp_path / "pca.png"
    result = invoke("show", images / "img0.png", "--model", export_dir, "--out", picture)
    assert result.exit_code == 0, result.output
    width, height = Image.open(picture).size
    # the photo beside its PCA by default (small ones enlarged to the minimum picture width), a caption below
    assert abs(width - MIN_PICTURE_WIDTH) <= 1 and height > 50
    assert invoke("show", images / "img0.png", "--model", export_dir, "--out", picture, "--pca-only").exit_code == 0
    assert Image.open(picture).size[0] == MIN_PICTURE_WIDTH  # 70 px of PCA, enlarged
    out = tmp_path / "features"
    invoke("extract", images / "img1.png", "--model", export_dir, "--out", out)
    assert invoke("show", out / "img1.safetensors", "--out", tmp_path / "f.png").exit_code == 0
    width, height = Image.open(tmp_path / "f.png").size
    assert width == MIN_PICTURE_WIDTH and height > 64
    no_model = invoke("show", images / "img0.png", "--out", picture)
    assert no_model.exit_code == 1 and "--model" in no_model.output


def test_build_engine_messages(export_dir):
    bad = invoke("build-engine", export_dir, "--min", "1x40x64", "--opt", "1x48x64", "--max", "2x64x64")
    assert bad.exit_code == 1 and "multiples of 16" in bad.output
    malformed = invoke("build-engine", export_dir, "--min", "1x48", "--opt", "1x48x64", "--max", "2x64x64")
    assert malformed.exit_code == 1 and "BATCHxHEIGHTxWIDTH" in malformed.output
    # missing TensorRT, flavours and real builds: test_runtime_trt.py, test_trt_rtx_builds.py


def test_console_script_exit_code_without_traceback(tmp_path):
    script = Path(sys.executable).parent / "ditf"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ditf_runtime.cli"]
    process = subprocess.run(
        command + ["extract", str(tmp_path), "--model", str(tmp_path / "x"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert process.returncode == 1
    assert "Error:" in process.stderr and "Traceback" not in process.stderr


def test_extract_says_what_it_wrote(export_dir, images, tmp_path):
    out = tmp_path / "out"
    result = invoke("extract", images, "--model", export_dir, "--out", out)
    assert result.exit_code == 0 and f"wrote 5 file(s) to {out}" in result.output
    again = invoke("extract", images, "--model", export_dir, "--out", out)
    assert f"nothing to do: all 5 file(s) are in {out}" in again.output


def test_extract_checks_the_model_and_device_before_writing_anything(export_dir, images, tmp_path):
    out = tmp_path / "out"
    for args in (["--model", tmp_path / "no-export"], ["--model", export_dir, "--device", "cuda"]):
        result = invoke("extract", images, *args, "--out", out)
        assert result.exit_code == 1 and "Error:" in result.output, result.output
        assert not out.exists()  # no folder, no ditf-extract.json claiming it


def test_ctrl_c_during_extract_says_how_to_resume(export_dir, images, tmp_path, monkeypatch):
    import importlib

    extract_module = importlib.import_module("ditf_runtime.cli.extract")  # the module, not the command
    real = extract_module.extract_jobs

    def interrupted(extractor, jobs, settings, metadata, progress):
        real(extractor, jobs[:2], settings, metadata, progress)  # two images get written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_module, "extract_jobs", interrupted)
    out = tmp_path / "out"
    result = invoke("extract", images, "--model", export_dir, "--out", out)
    assert result.exit_code == 130
    assert f"interrupted: 2 of 5 file(s) written to {out} (each one complete); rerun the same command to resume" \
        in result.output
    monkeypatch.setattr(extract_module, "extract_jobs", real)
    resumed = invoke("extract", images, "--model", export_dir, "--out", out)
    assert "2 already done, 3 to extract" in resumed.output and "wrote 3 file(s)" in resumed.output


def test_ditf_warnings_are_one_line(export_dir, tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    script = Path(sys.executable).parent / "ditf"
    process = subprocess.run([str(script), "show", str(tmp_path / "tiny.png"), "--model", str(export_dir), "--out",
                              str(tmp_path / "p.png")], capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    lines = [line for line in process.stderr.splitlines() if "tiny.png is only 4x4 pixels" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: "), process.stderr
