"""`ditf-export` and `ditf-detect-massive` refuse wrong options before torch is imported (seconds
saved on every typo), name the option at fault, and leave nothing behind; export hides only the
torch warnings known to be harmless."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"

# Each case: the command's arguments and the message it must print. Run in one fresh interpreter, which then
# reports whether torch was imported along the way.
CASES = {
    "out-exists": (["--model", "flux-tiny", "--out", "{exists}"], "--out {exists} already exists; pass --force"),
    "int8-no-calib": (["--model", "flux-tiny", "--out", "{out}", "--precision", "int8"],
                      "--precision int8 needs --calib-images DIR"),
    "fp8-no-calib": (["--model", "flux-tiny", "--out", "{out}", "--precision", "fp8"],
                     "--precision fp8 needs --calib-images DIR"),
    "calib-missing": (["--model", "flux-tiny", "--out", "{out}", "--precision", "int8", "--calib-images", "{nope}"],
                      "--calib-images {nope}: no such folder"),
    "discard-syntax": (["--model", "flux-tiny", "--out", "{out}", "--discard", "7,x"], "comma list of channel"),
    "discard-auto": (["--model", "flux-tiny", "--out", "{out}", "--discard", "auto"],
                     "--discard auto finds the massive channels from data: pass --calib-images"),
    "timestep": (["--model", "flux-tiny", "--out", "{out}", "--timestep", "1200"], "must be in [0, 1000]"),
    "layer": (["--model", "flux-tiny", "--out", "{out}", "--layer", "-2"], "layers are numbered from 0"),
    "folder": (["--model", "./no/such/model", "--out", "{out}"], "--model ./no/such/model: no such folder"),
    "embeds": (["--model", "flux-tiny", "--out", "{out}", "--prompt-embeds", "{nope}"], "no such file"),
    # a registry typo took 26 s to refuse, torch imported first (issue 27)
    "registry-typo": (["--model", "flux-tinny", "--out", "{out}"],
                      "--model 'flux-tinny': not a registry name, not an existing folder, and not an HF id "
                      "(owner/name); did you mean flux-tiny?"),
}

SCRIPT = textwrap.dedent("""
    import json, sys
    from click.testing import CliRunner
    from ditf_export.cli import detect_massive_main, main
    cases = json.loads(sys.argv[1])
    results = {}
    for name, (command, args) in cases.items():
        result = CliRunner().invoke(detect_massive_main if command == "detect" else main, args)
        results[name] = [result.exit_code, result.output]
    results["torch imported"] = "torch" in sys.modules
    print(json.dumps(results))
""")


def test_wrong_options_fail_before_torch_is_imported(tmp_path):
    exists = tmp_path / "exists"
    exists.mkdir()
    subs = {"{exists}": str(exists), "{out}": str(tmp_path / "out"), "{nope}": str(tmp_path / "nope")}

    def fill(text: str) -> str:
        for key, value in subs.items():
            text = text.replace(key, value)
        return text

    cases = {name: ["export", [fill(a) for a in args]] for name, (args, _) in CASES.items()}
    cases["detect-images"] = ["detect", ["--model", "flux-tiny", "--images", fill("{nope}")]]
    cases["detect-typo"] = ["detect", ["--model", "dinov2-smal", "--images", str(EXAMPLES)]]
    process = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    results = json.loads(process.stdout.strip().splitlines()[-1])
    for name, (_, message) in CASES.items():
        code, output = results[name]
        assert code == 1 and fill(message) in output and "Traceback" not in output, (name, output)
    code, output = results["detect-images"]
    assert code == 1 and f"--images {tmp_path / 'nope'}: no such folder" in output  # names the right option
    code, output = results["detect-typo"]
    assert code == 1 and "did you mean dinov2-small" in output, output
    assert results["torch imported"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]  # nothing else written


def test_detect_massive_checks_the_images_before_loading_the_model(tmp_path):
    from click.testing import CliRunner
    from ditf_export.cli import detect_massive_main

    (tmp_path / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(detect_massive_main, ["--model", "no-such-model", "--images", str(tmp_path)])
    # the folder is wrong and so is the model: the folder is reported (checked first, in a moment)
    assert result.exit_code == 1 and f"--images {tmp_path}: no images" in result.output


def test_only_the_known_harmless_export_warnings_are_hidden():
    from ditf_export.onnx_export import harmless_warnings_hidden

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with harmless_warnings_hidden():
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
            warnings.warn("# The axis name: batch will not be used, since it shares the same shape constraints "
                          "with another axis: batch.", UserWarning)
            warnings.warn("Converting a tensor to a Python boolean might cause the trace to be incorrect",
                          UserWarning)
    assert [str(w.message) for w in shown] == [
        "Converting a tensor to a Python boolean might cause the trace to be incorrect"]


@pytest.mark.parametrize("suffix", [".ppm", ".webp"])
def test_calibration_takes_the_runtimes_image_suffixes(tmp_path, suffix):
    from ditf_calib.data import list_images
    from ditf_runtime.preprocess import IMAGE_SUFFIXES
    from PIL import Image

    Image.open(EXAMPLES / "cat-a.jpg").save(tmp_path / f"cat{suffix}")
    assert suffix in IMAGE_SUFFIXES and list_images(tmp_path) == [tmp_path / f"cat{suffix}"]


@pytest.mark.parametrize("module", ["ditf_export", "ditf_export.cli"])
def test_python_dash_m_runs_ditf_export(module):
    """`python -m ditf_export[.cli]` is ditf-export (it used to exit 0 without doing anything)."""
    done = subprocess.run([sys.executable, "-m", module, "--model", "no-such-model-xyz", "--out", "unused"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "no-such-model-xyz" in done.stdout + done.stderr
