"""The memory guard (ditf_runtime.memory): the estimate, the refusal and where it applies.

The estimate's constants are calibrated against measured peak RSS by bench/bench_memory.py (not here:
timings and memory are measured by scripts, not tests). Here: the refusal names the estimate, the
budget and a size that fits, happens before anything runs or is written, and applies in extract,
match, eval-spair, the server's requests and Ray workers.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import ditf_runtime
import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.cli import main
from ditf_runtime.errors import ManifestError
from ditf_runtime.manifest import MANIFEST_FILE, Manifest, Workload, content_digest
from ditf_runtime.memory import (
    FALLBACK_WORKLOAD_NOTE,
    SESSION_OVERHEAD,
    MemoryBudgetError,
    RunShape,
    available_memory,
    check,
    check_long_side,
    estimate,
    largest_fitting_side,
    parse_bytes,
)
from PIL import Image

MIB = 1 << 20
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def manifest(flux_tiny_export) -> Manifest:
    return Manifest.load(flux_tiny_export)


def test_the_export_records_what_the_estimate_needs(manifest):
    # flux-tiny: 4 heads of 16, a 32-token prompt attended jointly, MLP 4 x 64, the tiny VAE's widths
    assert manifest.workload == Workload(heads=4, head_dim=16, text_tokens=32, text_attention="joint", ffn_dim=256,
                                         vae_channels=(16, 32, 32, 32), vae_attention=True, attention="dense")
    assert manifest.random_weights  # a built-in test model: its pictures say so


def test_estimate_grows_with_every_input_of_the_formula(manifest):
    base = estimate(manifest, RunShape(1, 2, 256, 256))
    for bigger in (RunShape(2, 2, 256, 256), RunShape(1, 4, 256, 256), RunShape(1, 2, 512, 256)):
        assert estimate(manifest, bigger).activations > base.activations
    # dense attention: doubling the side multiplies the attention terms by 16 (they dominate at large sizes)
    assert estimate(manifest, RunShape(1, 1, 1024, 1024)).vae > 10 * estimate(manifest, RunShape(1, 1, 512, 512)).vae
    assert estimate(manifest, RunShape(1, 1, 1024, 1024)).attention > 14 * estimate(
        manifest, RunShape(1, 1, 512, 512)).attention
    # a cross-attention family attends fewer pairs than a joint one with the same prompt
    cross = dataclasses.replace(manifest, workload=dataclasses.replace(manifest.workload, text_attention="cross"))
    assert estimate(cross, RunShape(1, 2, 256, 256)).attention < base.attention


def test_an_old_manifest_without_the_workload_gets_a_conservative_estimate(flux_tiny_export):
    old = dataclasses.replace(Manifest.load(flux_tiny_export), workload=None, random_weights=False)
    written = {k: v for k, v in old.to_dict().items() if k not in ("workload", "random_weights")}
    reloaded = Manifest.from_dict({**written, "digest": content_digest(written)})  # sealed without the fields
    assert reloaded.workload is None and not reloaded.random_weights  # such manifests still load
    rough = estimate(reloaded, RunShape(1, 2, 512, 512))
    assert rough.note == FALLBACK_WORKLOAD_NOTE
    # FLUX.1-dev's real workload on the same geometry: the fallback must not be smaller
    flux_dev = dataclasses.replace(reloaded, workload=Workload(heads=1, head_dim=64, text_tokens=512,
                                                                ffn_dim=256, vae_channels=(128, 256, 512, 512)))
    assert rough.activations >= estimate(flux_dev, RunShape(1, 2, 512, 512)).activations


def test_the_manifests_digest_covers_the_workload(flux_tiny_export, tmp_path):
    """The workload and the random-weights flag are sealed with the rest of the manifest: lowering the heads
    by hand (to slip a run past the memory guard) or clearing random_weights makes the manifest refused."""
    for field, value in (("workload", {"heads": 1}), ("random_weights", False)):
        folder = tmp_path / field
        shutil.copytree(flux_tiny_export, folder)
        data = json.loads((folder / MANIFEST_FILE).read_text())
        data[field] = {**data[field], **value} if isinstance(value, dict) else value
        (folder / MANIFEST_FILE).write_text(json.dumps(data, indent=2))
        with pytest.raises(ManifestError, match="changed after export"):
            Manifest.load(folder)


def test_refusal_names_the_estimate_the_budget_and_a_size_that_fits(manifest):
    shape = RunShape(1, 2, 1024, 1024)
    budget = estimate(manifest, RunShape(1, 2, 512, 512)).total + MIB
    with pytest.raises(MemoryBudgetError) as refused:
        check(manifest, shape, max_memory=budget)
    message = str(refused.value)
    need = estimate(manifest, shape)
    fits = largest_fitting_side([(manifest, shape)], budget, counts_weights=True)
    assert f"1024x1024, batch 1, E=2 needs about {need.total / (1 << 30):.1f} GiB" in message
    assert f"more than the --max-memory budget ({budget / MIB:.0f} MiB)" in message
    assert f"--size {fits} fits" in message and "--max-memory sets the budget" in message
    assert 512 <= fits < 1024 and fits % 16 == 0
    assert estimate(manifest, RunShape(1, 2, fits, fits)).total <= budget
    assert estimate(manifest, RunShape(1, 2, fits + 16, fits + 16)).total > budget
    with pytest.raises(MemoryBudgetError, match="no image size fits .* lower --ensemble or --batch-size"):
        check(manifest, shape, max_memory=MIB)
    assert check(manifest, RunShape(1, 2, 256, 256), max_memory=budget).total <= budget


def test_the_default_budget_is_the_memory_available_now(manifest):
    available = available_memory()
    assert available is not None and available > 0
    with pytest.raises(MemoryBudgetError, match=r"more than available memory \("):
        check_long_side(manifest, 16_384)  # within the size limit, far past the memory: refused, not run
    check_long_side(manifest, 256)  # a small run fits any machine this runs on


def test_a_low_precision_export_on_the_cpu_is_estimated_as_the_fp32_run_it_becomes(manifest):
    """onnxruntime's CPU provider converts an fp16 graph's weights to fp32 when the session is made and computes
    in fp32: the same export stored in half the bytes needs at least the fp32 export's memory there (the guard
    counted half the weights and 2-byte scores: runs it let through ran out of memory); it also keeps part of the
    fp16 originals (CPU_WIDENING 2.5: the fp32 copies and half the stored bytes, as measured). On a GPU the typed
    graph keeps both halved."""
    shape = RunShape(1, 2, 512, 512)
    files = {name: {**record, "bytes": record["bytes"] // 2} if name.startswith("model.onnx") else record
             for name, record in manifest.files.items()}
    for low in ("fp16", "bf16"):
        typed = dataclasses.replace(manifest, precision=low, files=files)  # the same graph, weights in 2 bytes
        on_cpu, fp32 = estimate(typed, shape), estimate(manifest, shape)  # device "cpu"
        assert on_cpu.attention == fp32.attention
        assert on_cpu.weights - SESSION_OVERHEAD == pytest.approx(1.25 * (fp32.weights - SESSION_OVERHEAD), rel=1e-5)
        on_gpu, fp32_gpu = estimate(typed, shape, device="cuda"), estimate(manifest, shape, device="cuda")
        assert on_gpu.attention == pytest.approx(fp32_gpu.attention / 2, rel=1e-6)
        assert on_gpu.weights - SESSION_OVERHEAD == pytest.approx((fp32_gpu.weights - SESSION_OVERHEAD) / 2, rel=1e-5)


def test_parse_bytes():
    assert parse_bytes("12G") == 12 << 30 and parse_bytes("1.5GiB") == 3 << 29 and parse_bytes("512m") == 512 * MIB
    assert parse_bytes("1000") == 1000
    for bad in ("x", "-1G", "0", "12Q"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_extractor_refuses_before_running(flux_tiny_export, monkeypatch):
    with ditf_runtime.load(flux_tiny_export, threads=1, max_memory=256 * MIB) as extractor:
        ran = []
        monkeypatch.setattr(extractor.runner, "infer", lambda feed: ran.append(feed))
        image = np.zeros((300, 400, 3), np.uint8)
        with pytest.raises(MemoryBudgetError, match=r"768x1024, batch 1, E=2 needs about .* --size \d+ fits"):
            extractor.extract([image], size=1024)
        assert ran == []  # nothing reached the backend


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_cli_match_with_a_huge_size_is_refused_in_seconds(flux_tiny_export):
    images = EXAMPLES / "cat-a.jpg", EXAMPLES / "cat-b.jpg"
    start = time.monotonic()
    # past the position tables: the size limit answers first
    result = _invoke("match", *images, "--model", flux_tiny_export, "--size", "100000")
    assert result.exit_code == 1 and "past this export's limit" in result.output
    # within them but far past the memory (dense attention over 700k tokens): the memory guard
    result = _invoke("match", *images, "--model", flux_tiny_export, "--size", "16384")
    assert result.exit_code == 1 and "needs about" in result.output and "--size" in result.output
    assert time.monotonic() - start < 30


def test_cli_extract_refuses_before_writing_anything(flux_tiny_export, tmp_path):
    out = tmp_path / "features"
    for extra in ((), ("--ray", "--workers", "2")):  # Ray: checked in the driver, before Ray starts
        result = _invoke("extract", EXAMPLES, "--model", flux_tiny_export, "--out", out,
                         "--max-memory", "40M", *extra)
        assert result.exit_code == 1 and "more than the --max-memory budget (40 MiB)" in result.output, result.output
        assert not out.exists()  # no folder, no ditf-extract.json


def test_cli_eval_spair_checks_the_largest_input_first(flux_tiny_export, spair_pair_without_images):
    root = spair_pair_without_images
    result = _invoke("eval-spair", root, "--model", flux_tiny_export, "--size", "2048", "--max-memory", "1G")
    assert result.exit_code == 1 and "2048x2048, batch 1, E=2 needs about" in result.output, result.output


def test_server_requests_over_budget_get_an_error_and_the_server_stays_up(flux_tiny_export):
    from ditf_runtime.serving.pipeline import FeaturePipeline

    with ditf_runtime.load(flux_tiny_export, threads=1, max_memory=estimate(
            Manifest.load(flux_tiny_export), RunShape(1, 2, 256, 256)).total) as extractor:
        pipeline = FeaturePipeline(extractor.manifest, extractor.run)
        image = np.random.default_rng(0).integers(0, 256, (1, 120, 160, 3), dtype=np.uint8)
        big, small = ({"image": image, "size": np.array([[size]], dtype=np.int64)} for size in (1024, 128))
        results = pipeline.handle("extract", [big, small])
        assert isinstance(results[0], MemoryBudgetError) and "--size" in str(results[0])
        assert results[1]["features"].shape == (1, 64, 6, 8)  # its neighbour in the batch is served


def test_ray_worker_stops_on_a_memory_refusal_instead_of_skipping_images(flux_tiny_export, tmp_path):
    """Only unreadable images are per-image failures in a Ray worker; a refusal (or a backend failure)
    would hit every image alike, so it stops the run."""
    from ditf_runtime.jobs import ExtractSettings
    from ditf_runtime.loading import LoadOptions
    from ditf_runtime.ray_extract import ExtractWorker

    Image.new("RGB", (64, 48)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    batch = {"image": np.array([str(tmp_path / "ok.png"), str(tmp_path / "bad.png")], dtype=object),
             "output": np.array([str(tmp_path / "out" / "ok.safetensors"), str(tmp_path / "out" / "bad.safetensors")],
                                dtype=object)}
    worker = ExtractWorker(str(flux_tiny_export), LoadOptions(threads=1), ExtractSettings(size=64), {})
    rows = worker(batch)
    assert list(rows["status"]) == ["done", "failed"] and "bad.png" in rows["message"][1]
    limited = ExtractWorker(str(flux_tiny_export), LoadOptions(threads=1, max_memory=MIB),
                            ExtractSettings(size=64, overwrite=True), {})
    with pytest.raises(MemoryBudgetError):
        limited(batch)


def test_a_workers_ditf_error_reaches_the_driver_unwrapped():
    """Ray hands a worker's exception back wrapped (RayTaskError.cause, UserCodeException.__cause__): the driver
    re-raises the DitfError inside, so `ditf extract --ray` prints its message rather than Ray's traceback."""
    from ditf_runtime.ray_extract import ditf_error_in

    refusal = MemoryBudgetError("1024x1024 needs about 9 GiB")

    class RayTaskError(Exception):  # the shape of Ray's wrapper: the original under .cause
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    try:
        try:
            raise refusal
        except MemoryBudgetError as inner:
            raise RuntimeError("UserCodeException") from inner
    except RuntimeError as wrapped:
        assert ditf_error_in(RayTaskError(wrapped)) is refusal
    assert ditf_error_in(RayTaskError(ValueError("not ours"))) is None


def test_sessions_run_without_memory_pattern_planning():
    """Memory-pattern planning kept a planned block beside the arena's chunks: from a session's second run on it
    held about twice the first run's peak (bench/bench_cpu_options.py, memory table) for no speed. Every session
    ditf opens (runtime, parity, calibration) goes through create_session, which turns it off."""
    import onnx
    from ditf_runtime.backends.onnxrt import create_session
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model)
    session = create_session(model.SerializeToString())
    assert session.get_session_options().enable_mem_pattern is False
    assert session.run(["y"], {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]


# Peaks measured by bench/bench_memory.py on the 2-core development VM (onnxruntime 1.32, CPU provider, 2 threads,
# peak RSS after a session's second run), 2026-12-06: the data the estimate's constants are calibrated on.
# --precisions: the medium model (hidden 768, 6 heads of 128, a 512-token prompt, FLUX's VAE widths), model.onnx;
# (precision, stored model.onnx + model.onnx.data bytes, H x W x E, whole run MiB: peak minus RSS before loading)
MEDIUM_WORKLOAD = Workload(heads=6, head_dim=128, text_tokens=512, text_attention="joint", ffn_dim=3072,
                           vae_channels=(128, 256, 512, 512), vae_attention=True, attention="dense")
MEDIUM_MEASURED = [
    ("fp32", 283_417_703, [((256, 256, 1), 499), ((512, 512, 1), 1002), ((512, 512, 4), 1356), ((768, 768, 1), 2174)]),
    ("fp16", 146_618_792, [((256, 256, 1), 559), ((512, 512, 1), 1063), ((512, 512, 4), 1407), ((768, 768, 1), 2298)]),
    ("int8", 175_787_408, [((256, 256, 1), 389), ((512, 512, 1), 901), ((512, 512, 4), 1248), ((768, 768, 1), 2096)]),
]
# flux-tiny (the `manifest` fixture), activations MiB (peak minus RSS after loading): (H, W, E, B, CPU variant, MiB)
TINY_MEASURED = [
    (256, 256, 2, 1, False, 24), (512, 512, 1, 1, False, 205), (512, 512, 8, 1, False, 506),
    (768, 768, 1, 1, False, 895), (768, 768, 2, 1, False, 907), (768, 768, 2, 2, False, 1814),
    (1024, 512, 2, 1, False, 716), (1024, 1024, 1, 1, False, 2466),
    (512, 512, 2, 1, True, 89), (1024, 1024, 2, 1, True, 355), (1024, 1024, 2, 2, True, 706),
    (1536, 1536, 2, 1, True, 862), (2048, 2048, 2, 1, True, 1410), (2048, 2048, 8, 1, True, 1459),
]


def _medium(manifest: Manifest, precision: str, stored: int) -> Manifest:
    """flux-tiny's manifest with the medium model's workload and stored bytes (the same strides: 8 and 16)."""
    files = {name: {**record, "bytes": stored if name == "model.onnx.data" else 0} if name.startswith("model.onnx")
             else record for name, record in manifest.files.items()}
    return dataclasses.replace(manifest, precision=precision, files=files, workload=MEDIUM_WORKLOAD)


@pytest.mark.parametrize("precision,stored,rows", MEDIUM_MEASURED)
def test_the_whole_run_estimate_is_within_25_percent_above_the_measured_peak(manifest, precision, stored, rows):
    """The guard's estimate before loading (weights + activations) against measured peaks: never below, at most
    1.25x (the old constants gave 1.26-1.53x: 1.5 weight copies, 6 VAE conv copies in model.onnx)."""
    for (h, w, e), measured in rows:
        ratio = estimate(_medium(manifest, precision, stored), RunShape(1, e, h, w)).total / (measured * MIB)
        assert 1.0 <= ratio <= 1.25, f"{precision} {h}x{w} E={e}: estimate / measured = {ratio:.2f}"


def test_the_activation_estimate_is_never_below_the_measured_peak(manifest):
    """With the weights loaded the guard checks the activations alone: never below what a run measured, for
    model.onnx (dense attention) and the CPU variant (fused) alike."""
    for h, w, e, b, fused, measured in TINY_MEASURED:
        need = estimate(manifest, RunShape(b, e, h, w, fused_attention=fused)).activations
        assert need >= measured * MIB, f"{h}x{w} E={e} B={b} fused={fused}: {need / MIB:.0f} < {measured} MiB"
