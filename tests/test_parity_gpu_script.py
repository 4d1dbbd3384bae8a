"""`make parity-gpu`'s CPU-only part (bench/parity_gpu.py --quick) runs here, so the GPU script cannot rot: models,
exports and their references, TensorRT-RTX engine builds, and the one table with a row per precision and backend
("skipped: no GPU" where a device is needed). On a GPU machine the same run must report no failed row."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from ditf_runtime.backends import trt
from trt_helpers import linked_copy

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "parity_gpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("parity_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["parity_gpu"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_parity_gpu_quick_runs_everything_up_to_the_device(tmp_path, capsys, flux_tiny_export,
                                                           flux_tiny_precision_export):
    script = _script()
    out = tmp_path / "out"
    # the session's flux-tiny exports are the script's own quick exports (same model, layer 3, 128 px, E = 2)
    linked_copy(flux_tiny_export, out / "exports" / "flux-tiny-l3-fp32")
    linked_copy(flux_tiny_precision_export("bf16"), out / "exports" / "flux-tiny-l3-bf16")
    rows = script.main(["--quick", "--precisions", "fp32,bf16", "--out", str(out), "--repeats", "1"])
    table = capsys.readouterr().out
    assert "| model" in table and "parity vs reference.safetensors" in table
    assert {(r.precision, r.backend) for r in rows} == {(p, b) for p in ("fp32", "bf16") for b in script.BACKENDS}
    assert not [r for r in rows if r.note.startswith(("failed", "export refused")) or "FAIL" in r.parity]
    if trt.gpu_or_none() is not None:
        return
    for row in rows:
        if row.backend == "tensorrt-rtx" and trt.installed(trt.RTX):
            assert row.note.startswith("skipped: no GPU (engine built in"), row
            engines = out / "exports" / f"flux-tiny-l3-{row.precision}" / "engines"
            assert [p.name for p in engines.iterdir() if (p / "engine.json").is_file()], row
        elif row.backend == "tensorrt" and not trt.installed(trt.ENTERPRISE):
            assert row.note == "skipped: TensorRT is not installed"
        else:
            assert row.note.startswith("skipped: no GPU"), row
        assert row.seconds is None and row.parity == ""


def test_precisions_come_from_the_runtime_and_unknown_ones_are_refused():
    from ditf_runtime.precision import Precision

    script = _script()
    with pytest.raises(ValueError):
        script.main(["--quick", "--precisions", "fp7"])
    parser_default = [p.value for p in Precision]
    assert "fp32" in parser_default and "bf16" in parser_default  # a new Precision member is a new row


def test_layer_28_is_extrapolated_from_three_depths():
    script = _script()
    rows = [script.Row("standin", 640, "bf16", "tensorrt-rtx", seconds=t, layer=k)
            for k, t in ((1, 1.0), (2, 1.5), (3, 1.7))]
    (row,) = script.extrapolated(rows)
    assert row.seconds == pytest.approx(1.0 + 18 * 0.5 + 9 * 0.2)
