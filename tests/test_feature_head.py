"""`ditf-export --head raw` (docs/DESIGN.md, "The feature"): the paper's ablation baseline as an export.

The raw head outputs the ensemble mean of h_K (block K's input) with the listed channels zeroed, and nothing
else: no LayerNorm, no AdaLN modulation. So "original" (--head raw --discard none), "+ AdaLN" (--discard
none) and "+ channel discard" (the default) are three exports of one model. Thresholds as in
test_export_flux.py: against diffusers' own forward, per-token cosine >= 0.99999 and relative error <= 1e-4.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ditf_runtime.errors import ManifestError
from ditf_runtime.manifest import MANIFEST_FILE, Manifest, content_digest
from ditf_runtime.parity import compare

MIN_COSINE = 0.99999
MAX_REL_ERROR = 1e-4
FLUX_MASSIVE = (7, 41)  # the channels flux-tiny plants at +-300 (ditf_export.tiny)
IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def raw_export(tmp_path_factory, flux_tiny_dir) -> Path:
    """flux-tiny at layer 3, --head raw --discard none: the paper's "original" row."""
    from ditf_export.export import ExportRequest, export

    out = tmp_path_factory.mktemp("raw-head") / "flux-tiny-l3-raw"
    export(ExportRequest(model=str(flux_tiny_dir), out=out, layer=3, discard="none", head="raw", ensemble=2,
                         image_size=128, text_max_length=32))
    return out


def test_raw_head_export_is_block_k_input_from_diffusers_hooks(raw_export, flux_tiny_dir):
    import onnxruntime as ort
    from safetensors.numpy import load_file

    import ditf_runtime
    from test_export_flux import diffusers_hook_features

    m = Manifest.load(raw_export)
    assert m.feature.head == "raw" and m.feature.discard == () and m.feature.discard_source == "none"
    assert m.parity["passed"]
    ref = load_file(str(raw_export / "reference.safetensors"))
    expected = diffusers_hook_features(flux_tiny_dir, 3, torch.from_numpy(ref["image"]),
                                       torch.from_numpy(ref["noise"]), discard=(), head="raw")
    session = ort.InferenceSession(str(raw_export / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"image": ref["image"], "noise": ref["noise"]})[0]
    res = compare(got, expected, "fp32")
    assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res
    # no LayerNorm: the planted massive channels are still there, hundreds of times the median channel
    median = np.median(np.abs(got), axis=(0, 2, 3))
    assert set(np.flatnonzero(median > 50 * np.median(median)).tolist()) == set(FLUX_MASSIVE)
    assert np.abs(got[:, list(FLUX_MASSIVE)]).min() > 100
    # the graph's metadata says raw too, and the runtime loads and checks it against its reference
    with ditf_runtime.load(raw_export, threads=1) as extractor:
        assert extractor.manifest.feature.head == "raw"
        assert extractor.verify_reference()


def _family_request(name: str, folder: Path, tmp: Path, **kw):
    """A small request per family: layer 1, the family's planted channels discarded, its conditioning."""
    from ditf_export.export import ExportRequest
    from ditf_export.tiny import LATTE_TINY_MASSIVE

    if name == "flux":
        massive, extra = FLUX_MASSIVE, {"text_max_length": 32}
    elif name == "latte":
        massive, extra = LATTE_TINY_MASSIVE, {}
    else:
        from test_families import FAMILIES

        massive, extra = FAMILIES[name].massive, FAMILIES[name].export_kw(tmp)
    return ExportRequest(model=str(folder), out=tmp / "unused", layer=1, timestep=260, ensemble=2, image_size=128,
                         discard=",".join(map(str, massive)), **extra, **kw), massive


@pytest.mark.parametrize("name", ["flux", "sd3", "pixart", "dit", "latte"])
def test_raw_head_is_what_the_adaln_head_modulates_in_every_family(name, family_tiny_dir, flux_tiny_dir, tmp_path):
    """One generic head for every family: --head raw outputs exactly the tensor the AdaLN head normalises and
    modulates (discarded channels zeroed), so LayerNorm + (1 + scale_K) x + shift_K of it is the default feature."""
    import torch.nn.functional as F

    from ditf_calib.graph_io import FRAMES, Sizes
    from ditf_export.export import build_graph, plan
    from ditf_export.feature_graph import FeatureHead, RawHead

    folder = flux_tiny_dir if name == "flux" else family_tiny_dir(name)
    request, massive = _family_request(name, folder, tmp_path)
    adaln_plan, raw_plan = plan(request), plan(dataclasses.replace(request, head="raw"))
    assert adaln_plan.options.head == "adaln" and raw_plan.options.head == "raw"
    adaln, raw = build_graph(adaln_plan).graph, build_graph(raw_plan).graph
    assert isinstance(adaln.head, FeatureHead) and isinstance(raw.head, RawHead)
    io = raw_plan.io
    frames = 2 if io.has_axis(FRAMES) else None
    feed = io.random_inputs(Sizes(batch=2, ensemble=2, height=48, width=80, frames=frames), seed=5)
    inputs = [torch.from_numpy(feed[n]) for n in io.input_names]
    with torch.no_grad():
        want, got = adaln(*inputs), raw(*inputs)
    assert got.shape == want.shape
    assert bool((got[..., list(massive), :, :] == 0).all())  # discard still applies to the raw head
    tokens = got.movedim(-3, -1)  # channels last, image and video alike
    head = adaln.head
    modulated = F.layer_norm(tokens, (tokens.shape[-1],), eps=head.eps) * head.scale_plus_one + head.shift
    res = compare(modulated.movedim(-1, -3).reshape(-1, *want.shape[-3:]).numpy(),
                  want.reshape(-1, *want.shape[-3:]).numpy(), "fp32")
    assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res
    assert compare(got.reshape(-1, *want.shape[-3:]).numpy(), want.reshape(-1, *want.shape[-3:]).numpy(),
                   "fp32").min_cosine < 0.9  # and the raw feature is really not the modulated one


def _invoke(args):
    from ditf_export.cli import main

    return CliRunner().invoke(main, args)


def test_an_unknown_head_is_refused_by_the_command(tmp_path, flux_tiny_dir):
    r = _invoke(["--model", str(flux_tiny_dir), "--layer", "3", "--head", "layernorm", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "'layernorm' is not one of 'adaln', 'raw'" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_the_request_refuses_an_unknown_head_without_the_command(tmp_path, flux_tiny_dir):
    from ditf_export.errors import ExportInputError
    from ditf_export.request import ExportRequest

    with pytest.raises(ExportInputError, match="--head 'ln': choose one of adaln, raw"):
        ExportRequest(model=str(flux_tiny_dir), out=tmp_path / "o", head="ln").check()


def test_head_is_refused_for_a_family_without_adaln(tmp_path):
    """DINOv2's features have no AdaLN modulation: --head has nothing to choose there, and says so."""
    r = _invoke(["--model", "dinov2-tiny", "--head", "raw", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "--head raw: dinov2 features have no AdaLN modulation" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_a_manifest_without_the_head_field_loads_as_adaln(flux_tiny_export, tmp_path):
    """Exports written before --head existed carry no feature.head: they are AdaLN graphs and still load."""
    import ditf_runtime

    current = Manifest.load(flux_tiny_export)
    assert current.feature.head == "adaln"
    written = current.to_dict()
    written["feature"] = {k: v for k, v in written["feature"].items() if k != "head"}
    old = {**written, "digest": content_digest(written)}  # sealed without the field, as an old exporter did
    assert Manifest.from_dict(old).feature.head == "adaln"
    folder = tmp_path / "old-export"
    shutil.copytree(flux_tiny_export, folder)
    (folder / MANIFEST_FILE).write_text(json.dumps(old, indent=2) + "\n")
    with ditf_runtime.load(folder, threads=1) as extractor:
        assert extractor.manifest.feature.head == "adaln"
    # a value this runtime does not know is refused by name, not read as some other head
    future = dict(written, feature={**written["feature"], "head": "rms"})
    with pytest.raises(ManifestError, match="unknown feature head 'rms'"):
        Manifest.from_dict({**future, "digest": content_digest(future)})


def test_int8_has_no_evidence_on_raw_features_dominated_by_massive_channels(raw_export, flux_tiny_dir):
    """flux-tiny's raw h_K is dominated by its two planted +-300 channels: every token is nearly the same vector,
    so no match is decisive. The INT8 gate, run on this graph's real outputs (run_parity -> compare), finds no
    evidence and fails, and the export's message says what would help (measured end to end: `ditf-export
    --head raw --discard none --precision int8` on flux-tiny is refused this way)."""
    from safetensors.numpy import load_file

    from ditf_export.export import ExportRequest, _what_to_give, plan
    from ditf_export.parity import ParityCase, run_parity
    from ditf_runtime.precision import Precision

    the_plan = plan(ExportRequest(model=str(flux_tiny_dir), out=raw_export.parent / "unused", layer=3, head="raw",
                                  discard="none", ensemble=2, image_size=128, text_max_length=32, precision="int8",
                                  calib_images=IMAGES))
    ref = load_file(str(raw_export / "reference.safetensors"))
    case = ParityCase("2 held-out real images", ({"image": ref["image"], "noise": ref["noise"]},),
                      (ref["features"],), gates=True)
    report = run_parity((case,), raw_export / "model.onnx", the_plan.io, Precision.INT8)
    row = report.results[0]
    assert row["passed"] and row["min_cosine"] > 0.99999, row  # cosine and error alone would pass it
    assert row["nn_points"] == 0 and row["pck_points"] == 0, row
    assert not report.passed and "no decisive keypoint transfer" in report.evidence_missing
    message = _what_to_give(the_plan, report)
    assert "keeps every channel (--discard none)" in message and "--precision bf16/fp16" in message
    assert "--calib-images with more" not in message  # more calibration would not help
