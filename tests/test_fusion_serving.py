"""The fused pipeline served: `ditf serve --model A --model B` (PyTriton), and the Triton repository with
both graph models plus the fusing python-backend models. flux-tiny + dinov2-tiny throughout.

Here: the served arrays equal `ditf_runtime.load(a, b).extract` bit for bit; every config of the fused
repository parses with Triton's own ModelConfig protobuf; and the python-backend model.py the repository
carries builds its fused pipeline from the written config (its initialize() needs no Triton; execute() is
the single-model code path the bundled-Triton test of test_serving_python_backend.py runs). Not here: BLS
calls into the onnxruntime graph models, which need a full Triton.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import ditf_runtime
from ditf_runtime.manifest import MANIFEST_FILE
from ditf_runtime.serving.protocol import extract_ports, served_geometry
from ditf_runtime.serving.triton_repo import TritonOptions, _model_name, write_model_repository
from serving_helpers import ServerProcess, session_pids

text_format = pytest.importorskip("google.protobuf.text_format", reason="installed by `make setup` (ditf-runtime[serve]); absent only in a hand-made environment")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="installed by `make setup` (ditf-runtime[serve]); absent only in a hand-made environment")


@pytest.fixture(scope="module")
def exports(flux_tiny_export, dinov2_tiny_export):
    return Path(flux_tiny_export), Path(dinov2_tiny_export(False))


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((90, 120), (128, 72))]


def test_ditf_serve_fuses_like_the_library(exports, tmp_path):
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install 'ditf-runtime[serve]')")
    from ditf_runtime.serving.client import FeatureClient, ServerError

    flux, dino = exports
    images = _images()
    with ditf_runtime.load(flux, dino, weights=(0.3, 0.7), threads=1) as fused:
        local = fused.extract(images, seed=4)
    points = [[10, 20], [119, 89], [60, 45]]
    expected = ditf_runtime.transfer_keypoints(local[0], local[1], points)
    server = ServerProcess.ditf_serve(flux, tmp_path / "serve.log", "--model", str(dino), "--fuse-weight", "0.3")
    with server:
        with FeatureClient(server.url, concurrency=1) as client:
            for served, want in zip(client.extract(images, seed=4), local):
                assert (served.image_size, served.input_size, served.stride) == (want.image_size, want.input_size,
                                                                                 want.stride)
                np.testing.assert_array_equal(np.asarray(served), np.asarray(want))
            np.testing.assert_array_equal(client.match(images[0], images[1], points, seed=4).target_points, expected)
            with pytest.raises(ServerError, match="each fused model keeps its own input size"):
                client.extract(images[:1], size=64)
            with pytest.raises(ServerError, match="send the uint8 'image'"):
                client.extract_pixels(np.zeros((1, 3, 32, 32), np.float32))
    assert server.process.returncode == 0, server.log_text()[-3000:]
    assert session_pids(server.process.pid) == []


def _parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_fused_triton_repository(exports, tmp_path):
    flux, dino = exports
    repo = write_model_repository([flux, dino], tmp_path / "repo", TritonOptions(weights=(0.4, 0.6)))
    names = [_model_name(ditf_runtime.manifest.Manifest.load(d)) for d in (flux, dino)]
    assert names[1] == "dinov2-tiny" and names[0].endswith("flux-tiny")
    graphs = [_parse(repo / name / "config.pbtxt") for name in names]
    assert [t.name for t in graphs[0].input] == ["image", "noise"]
    assert [t.name for t in graphs[1].input] == ["image"]  # DINOv2 takes no noise
    assert list(graphs[1].output[0].dims) == [32, -1, -1]
    manifests = [ditf_runtime.manifest.Manifest.load(d) for d in (flux, dino)]
    inputs, outputs = extract_ports(served_geometry(manifests))
    for task in ("extract", "match"):
        config = _parse(repo / task / "config.pbtxt")
        assert config.backend == "python"
        params = {k: v.string_value for k, v in config.parameters.items()}
        fusion = json.loads(params["ditf_fusion"])
        assert fusion["weights"] == [0.4, 0.6] and fusion["graph_models"] == names
        for k, folder in enumerate((flux, dino)):
            assert (repo / task / "1" / "members" / str(k) / MANIFEST_FILE).read_text() == \
                (folder / MANIFEST_FILE).read_text()
    extract = _parse(repo / "extract" / "config.pbtxt")
    assert "noise" not in [t.name for t in extract.input]
    assert list(extract.output[0].dims) == [64 + 32, -1, -1] == list(outputs[0].shape)
    # too many exports, a name for two graph models
    with pytest.raises(ditf_runtime.errors.InputError, match="one export or two"):
        write_model_repository([flux, dino, flux], tmp_path / "r3")
    with pytest.raises(ditf_runtime.errors.InputError, match="--name names the graph model of one export"):
        write_model_repository([flux, dino], tmp_path / "r4", TritonOptions(name="x"))


def test_the_repositorys_python_model_builds_the_fused_pipeline(exports, tmp_path):
    """model.py's initialize() in "local" mode, as Triton calls it, then its pipeline on two requests."""
    flux, dino = exports
    repo = write_model_repository([flux, dino], tmp_path / "repo",
                                  TritonOptions(pipeline="local", graph=False, threads=1, weights=(0.3, 0.7)))
    spec = importlib.util.spec_from_file_location("ditf_generated_model", repo / "extract" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json.dumps({"max_batch_size": 8, "input": [{"name": p.name} for p in extract_ports(
        served_geometry([ditf_runtime.manifest.Manifest.load(d) for d in (flux, dino)]))[0]],
        "parameters": {k: {"string_value": v.string_value} for k, v in
                       _parse(repo / "extract" / "config.pbtxt").parameters.items()}})
    model.initialize({"model_config": config, "model_repository": str(repo / "extract"), "model_version": "1"})
    try:
        images = _images()
        answers = model.pipeline.handle("extract", [{"image": image[None], "seed": np.full((1, 1), 2, np.int64)}
                                                    for image in images])
        with ditf_runtime.load(flux, dino, weights=(0.3, 0.7), threads=1) as fused:
            local = fused.extract(images, seed=2)
        for answer, want in zip(answers, local):
            np.testing.assert_array_equal(answer["features"][0], want.array[0])
            assert tuple(answer["input_size"][0]) == want.input_size
    finally:
        model.finalize()
