"""The python-backend model that `ditf triton-repo` writes, loaded by a real Triton server: the
one bundled in nvidia-pytriton (python backend only, so the pipeline runs in "local" mode; the
onnxruntime/tensorrt_plan graph models and "bls" mode need a full Triton, not available here).
"""

from __future__ import annotations

import threading

import ditf_runtime
import numpy as np
import pytest
from ditf_runtime.serving.triton_repo import TritonOptions, write_model_repository
from serving_helpers import session_pids, tritonserver

pytest.importorskip("pytriton", reason="nvidia-pytriton (which bundles tritonserver) is not installed")
from ditf_runtime.serving.client import FeatureClient, ServerError


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("triton")
    repo = write_model_repository(export_dir, work / "repo", TritonOptions(pipeline="local", graph=False, threads=1))
    process = tritonserver(repo, work, work / "tritonserver.log")
    with process:
        yield process
    assert process.process.returncode == 0, process.log_text()[-3000:]
    assert session_pids(process.process.pid) == []


def test_generated_pipeline_model_serves_local_features(server, export_dir):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 70), (64, 48)]]
    with ditf_runtime.load(export_dir, threads=1) as extractor:
        local = extractor.extract(images, seed=11)
    for url in (server.url, server.grpc_url):
        with FeatureClient(url) as client:
            for served, expected in zip(client.extract(images, seed=11), local):
                assert (served.image_size, served.input_size) == (expected.image_size, expected.input_size)
                np.testing.assert_array_equal(np.asarray(served), np.asarray(expected))
            match = client.match(images[0], images[1], [[10, 20], [60, 40]], seed=11)
            expected_xy = ditf_runtime.transfer_keypoints(local[0], local[1], [[10, 20], [60, 40]])
            np.testing.assert_array_equal(match.target_points, expected_xy)


def test_python_backend_fails_only_the_malformed_request(server):
    """Here each request gets its own response: NaN pixels fail alone, batch-mates succeed."""
    good = np.random.default_rng(1).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32)
    outcomes = {"good": [], "bad": []}

    def send(kind, pixels):
        with FeatureClient(server.url) as client:
            for _ in range(10):
                try:
                    client.extract_pixels(pixels, seed=1)
                    outcomes[kind].append("ok")
                except ServerError as exc:
                    outcomes[kind].append(str(exc))

    threads = [threading.Thread(target=send, args=a) for a in [("good", good), ("bad", np.full_like(good, np.nan))]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes["good"] == ["ok"] * 10
    assert all(m == "extract: InputError: pixels hold NaN or infinite values" for m in outcomes["bad"]), outcomes
