"""Streaming rewrites (calib/tensors.py): graphs on disk are rewritten tensor by tensor, never loaded whole.

A small model with every initializer external ("external data for everything": threshold 0) stands in
for a multi-GB export. Each rewrite must give exactly what the in-memory rewrite gives, while reading
each weight once, holding at most a couple of tensors at a time (live arrays, and numpy's allocations
under tracemalloc), and never growing the proto with weights.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditf_calib import graph as G
from ditf_calib.apply import apply_precision
from ditf_calib.int8 import Int8Config, quantize
from ditf_calib.precision import to_low_precision
from ditf_calib.tensors import GraphRewrite, TensorStore, load_graph

WIDTH, LAYERS = 256, 16
WEIGHT_BYTES = WIDTH * WIDTH * 4


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x [N, TOKENS, WIDTH] -> LAYERS x (MatMul + bias Add + Relu), the last as a Gemm (transB) on [N*TOKENS,
    WIDTH], as some exporters write linears -> a feature map [N, WIDTH, 4, 4]; every weight WIDTH x WIDTH."""
    rng = np.random.default_rng(seed)
    inits, x = [], "x"
    # shapes as Constant nodes: onnxruntime reads shape tensors only from the proto
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(shape, np.int64)))
             for name, shape in (("flat", [-1, WIDTH]), ("grid", [-1, WIDTH, 4, 4]))]
    for i in range(LAYERS):
        w, b = f"w{i}", f"b{i}"
        inits += [numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / WIDTH**0.5).astype(np.float32), w),
                  numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32) * 0.1, b)]
        if i == LAYERS - 1:
            nodes += [helper.make_node("Reshape", [x, "flat"], ["x2d"], name="to2d"),
                      helper.make_node("Gemm", ["x2d", w, b], [f"h{i}"], transB=1, name=f"gemm{i}")]
        else:
            nodes += [helper.make_node("MatMul", [x, w], [f"m{i}"], name=f"mm{i}"),
                      helper.make_node("Add", [f"m{i}", b], [f"a{i}"], name=f"add{i}"),
                      helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}")]
        x = f"h{i}"
    nodes += [helper.make_node("Reshape", [x, "flat"], ["tokens"], name="tokens"),
              helper.make_node("Transpose", ["tokens"], ["channels"], perm=[1, 0], name="channels"),
              helper.make_node("Reshape", ["channels", "grid"], ["y"], name="y")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.fixture()
def on_disk(tmp_path) -> Path:
    """The MLP saved with every initializer (biases too) in model.onnx.data."""
    path = tmp_path / "model.onnx"
    onnx.save_model(_mlp(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert all(t.data_location == TensorProto.EXTERNAL for t in load_graph(path).graph.initializer)
    return path


def _feeds(n: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 16, WIDTH)).astype(np.float32)} for _ in range(n)]


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in G.load(path).graph.initializer}


def _same_model(path: Path, in_memory: onnx.ModelProto) -> None:
    """The streamed rewrite on disk equals the in-memory rewrite: nodes, and every initializer's values."""
    got = G.load(path)
    assert [(n.op_type, list(n.input), list(n.output)) for n in got.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in in_memory.graph.node]
    want = {t.name: numpy_helper.to_array(t) for t in in_memory.graph.initializer}
    have = _initializers(path)
    assert have.keys() == want.keys()
    for name, arr in want.items():
        assert have[name].dtype == arr.dtype and have[name].shape == arr.shape \
            and have[name].tobytes() == arr.tobytes(), name


def _streamed(rewrite, src: Path, dst: Path):
    """Run `rewrite(model, store)` through a GraphRewrite under tracemalloc; returns (result, stats, peak)."""
    tracemalloc.start()
    try:
        with GraphRewrite(src, dst) as rw:  # the default threshold: shape tensors come back inline
            out = rewrite(rw.model, rw.store)
            model = out[0] if isinstance(out, tuple) else out
            assert model.ByteSize() < WEIGHT_BYTES, "weights were put into the proto"
            rw.commit(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, rw.store.stats, peak


@pytest.mark.parametrize("precision,emulate", [("fp16", False), ("bf16", False), ("fp16", True)])
def test_low_precision_rewrite_streams_tensor_by_tensor(tmp_path, on_disk, precision, emulate):
    total = LAYERS * WEIGHT_BYTES
    dst = tmp_path / "out" / "model.onnx"
    dst.parent.mkdir()
    (_, islands), stats, peak = _streamed(
        lambda m, s: to_low_precision(m, precision, emulate=emulate, store=s), on_disk, dst)
    # each island weight (every MatMul/Gemm weight and bias) read exactly once
    assert stats.tensors == islands.weights == 2 * LAYERS
    assert stats.peak_live_bytes <= WEIGHT_BYTES, "more than one weight held at a time"
    assert peak < 4 * WEIGHT_BYTES == total / 4, f"tracemalloc peak {peak} B for {total} B of weights"
    _same_model(dst, to_low_precision(G.load(on_disk), precision, emulate=emulate)[0])
    ref = G.session(G.load(on_disk)).run(None, _feeds(1)[0])[0]
    got = G.session(dst).run(None, _feeds(1)[0])[0] if emulate or precision == "fp16" else None
    if got is not None:
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-2


def test_int8_quantize_streams_and_calibrates_on_disk(on_disk):
    """Calibration sessions read the weights from disk; int8 weights are written one at a time, in place."""
    feeds = _feeds()
    config = Int8Config()
    (qmodel, report), stats, peak = _streamed(lambda m, s: quantize(m, feeds, config, store=s), on_disk, on_disk)
    in_memory, _ = quantize(_mlp(), feeds, config)
    _same_model(on_disk, in_memory)
    assert report.to_dict()["linear_layers_quantized"] == LAYERS
    assert stats.peak_live_bytes <= 2 * WEIGHT_BYTES
    assert peak < 6 * WEIGHT_BYTES < LAYERS * WEIGHT_BYTES / 2, f"tracemalloc peak {peak} B"
    assert not list(on_disk.parent.glob(".*")), "temporary data files left behind"


def test_apply_precision_never_loads_the_weights(tmp_path, on_disk, monkeypatch):
    """The export's precision step on a graph on disk: no whole-model load, twin removed afterwards."""
    import onnx.external_data_helper as ext

    def refuse(*args, **kwargs):
        raise AssertionError("the whole model was loaded into memory")

    monkeypatch.setattr(G, "load", refuse)
    monkeypatch.setattr(ext, "load_external_data_for_model", refuse)
    for precision in ("fp16", "bf16"):
        work = tmp_path / precision
        work.mkdir()
        path = work / "model.onnx"
        with GraphRewrite(on_disk, path) as rw:  # a streamed copy
            rw.commit(rw.model)
        with apply_precision(path, precision, check_feeds=_feeds(2), progress=None) as result:
            assert result.parity_model.is_file() and result.report["range_check"]["inputs_checked"] == 2
        assert result.scratch is not None and not result.scratch.exists()
        assert sorted(p.name for p in work.iterdir()) == ["model.onnx", "model.onnx.data"]
        assert {t.data_type for t in load_graph(path).graph.initializer if t.name.endswith(f"_{precision}")} == \
            {TensorProto.FLOAT16 if precision == "fp16" else TensorProto.BFLOAT16}


def test_store_reads_only_when_asked_and_refuses_without_a_folder(on_disk):
    model = load_graph(on_disk)
    store = TensorStore(on_disk.parent)
    idx = G.GraphIndex(model.graph, store)
    assert idx.dims("w0") == (WIDTH, WIDTH) and store.stats.tensors == 0  # shapes without reading
    arr = idx.array("w0")
    assert arr.shape == (WIDTH, WIDTH) and store.stats.tensors == 1 and store.stats.live_bytes == WEIGHT_BYTES
    del arr
    assert store.stats.live_bytes == 0
    with pytest.raises(ValueError, match="no folder to read it from"):
        G.GraphIndex(model.graph).array("w0")
    with pytest.raises(ValueError, match="pass the TensorStore"):
        G.session(model)


def test_failed_rewrite_leaves_the_source_untouched(on_disk):
    before = on_disk.with_name("model.onnx.data").read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with GraphRewrite(on_disk, on_disk) as rw:
            to_low_precision(rw.model, "fp16", store=rw.store)
            raise RuntimeError("boom")
    assert on_disk.with_name("model.onnx.data").read_bytes() == before
    assert sorted(p.name for p in on_disk.parent.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_calibration_sessions_run_without_the_memory_arena():
    """A calibration run frees the VAE's image-sized tensors before the transformer makes larger ones; onnxruntime's
    arena kept them held beside those (FLUX.1-dev stand-in, 640 px: a fully used 2.2 GB region beside 4.1 GB of
    weights). Calibration and range-check sessions turn it off; the runtime's sessions (run many times) keep it."""
    from ditf_runtime.backends.onnxrt import create_session

    model = _mlp()
    calibration = G.session(model)
    assert calibration.get_session_options().enable_cpu_mem_arena is False
    assert create_session(model.SerializeToString()).get_session_options().enable_cpu_mem_arena is True
    feed = _feeds(1)[0]
    assert np.array_equal(calibration.run(None, feed)[0], create_session(model.SerializeToString()).run(None, feed)[0])


def test_calibrating_one_noise_draw_at_a_time_writes_the_same_graph(flux_tiny_export, tmp_path):
    """apply_precision calibrates on one feed per noise draw (half the attention memory per run at E = 2, the
    calibration ensemble): per-channel maxima and histogram counts add up over runs, so the written int8 and fp8
    graphs are byte for byte those of whole feeds."""
    from ditf_calib.data import load_calibration_set
    from ditf_calib.fp8 import fp8_config
    from ditf_calib.graph_io import diffusion_io

    io = diffusion_io(latent_channels=16, feature_channels=64, vae_stride=8, patch_size=2)
    images = Path(__file__).resolve().parents[1] / "examples" / "images"
    cs = load_calibration_set(images, io=io, long_side=64, ensemble=2)

    def quantized(feeds, config, name):
        folder = tmp_path / name
        folder.mkdir()
        for f in ("model.onnx", "model.onnx.data"):
            (folder / f).write_bytes((Path(flux_tiny_export) / f).read_bytes())
        with GraphRewrite(folder / "model.onnx", folder / "model.onnx") as rw:
            model, report = quantize(rw.model, feeds, config, store=rw.store)
            rw.commit(model)
        return (folder / "model.onnx").read_bytes(), (folder / "model.onnx.data").read_bytes(), report

    for config in (Int8Config(), fp8_config(Int8Config()), Int8Config(calibration="percentile")):
        whole = quantized(list(cs.feeds()), config, f"{config.number_format}-{config.calibration}-whole")
        split = quantized(list(cs.feeds_per_draw()), config, f"{config.number_format}-{config.calibration}-split")
        assert split[2].feeds == 2 * whole[2].feeds
        assert split[:2] == whole[:2], f"{config.number_format} {config.calibration}: the graphs differ"


def test_apply_precision_calibrates_one_noise_draw_per_run(flux_tiny_export, tmp_path, monkeypatch):
    """The export's int8/fp8 step feeds calibration one noise draw per run (FLUX.1-dev's widths at 640 px:
    428 MB of attention scores per draw and copy; at E = 2 they were all held at once)."""
    import ditf_calib.int8 as int8
    from ditf_calib.data import load_calibration_set
    from ditf_calib.graph_io import diffusion_io

    seen = []

    def spy(model, feeds, *args, **kwargs):
        seen.extend(feed["noise"].shape for feed in feeds)
        raise RuntimeError("stop after seeing the feeds")

    monkeypatch.setattr(int8, "quantize", spy)
    for f in ("model.onnx", "model.onnx.data"):
        (tmp_path / f).write_bytes((Path(flux_tiny_export) / f).read_bytes())
    io = diffusion_io(latent_channels=16, feature_channels=64, vae_stride=8, patch_size=2)
    cs = load_calibration_set(Path(__file__).resolve().parents[1] / "examples" / "images", io=io, long_side=64,
                              ensemble=2)
    with pytest.raises(RuntimeError, match="stop after"):
        apply_precision(tmp_path / "model.onnx", "int8", check_feeds=[], calibration=cs, progress=None)
    assert len(seen) == 2 * len(cs) and all(shape[:2] == (1, 1) for shape in seen)
