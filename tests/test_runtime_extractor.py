"""load() / Extractor on a tiny graph with the export contract: values, noise, checks, refusals."""

from __future__ import annotations

import shutil
import sys
import zlib

import ditf_runtime
import numpy as np
import pytest
from ditf_runtime.backends.onnxrt import OnnxrtRunner, SessionFromOnnx
from ditf_runtime.errors import BackendError, InputError
from ditf_runtime.manifest import MANIFEST_FILE, MODEL_DATA_FILE, MODEL_FILE, Manifest, ManifestError
from ditf_runtime.preprocess import Preprocess
from PIL import Image
from runtime_graphs import build_tiny_export, tiny_reference, with_geometry


@pytest.fixture(scope="module")
def extractor(export_dir):
    with ditf_runtime.load(export_dir, threads=1) as loaded:
        yield loaded


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_reference_parity(extractor):
    result = extractor.verify_reference()
    assert result, str(result)
    assert result.rel_error < 1e-5 and result.min_cosine > 0.99999 and result.nn_agreement == 1.0


def test_extract_matches_numpy_with_default_noise(extractor):
    image = random_image(50, 70)
    (fm,) = extractor.extract(image, seed=3)
    prepared = extractor.prepare(image)
    content = zlib.crc32(prepared.pixels.tobytes())
    noise = np.random.default_rng([3, content]).standard_normal((2, 4, 6, 8), dtype=np.float32)
    expected = tiny_reference(extractor.export_dir, prepared.pixels[None], noise[None])
    np.testing.assert_allclose(np.asarray(fm), expected, atol=2e-6)


def test_feature_map_geometry(extractor):
    fm = extractor.extract(random_image(50, 70))[0]
    array = np.asarray(fm)
    assert array.dtype == np.float32 and array.shape == (1, 32, 3, 4)
    assert fm.image_size == (50, 70) and fm.input_size == (48, 64) and fm.stride == 16
    assert fm.grid_size == (3, 4) and fm.channels == 32


def test_features_do_not_depend_on_batch_mates(export_dir):
    a, b, c = random_image(50, 70, 1), random_image(50, 70, 2), random_image(90, 40, 3)
    with ditf_runtime.load(export_dir, batch_size=4) as batched:
        alone = batched.extract([a])[0]
        together = batched.extract([b, a, c])
    assert np.array_equal(np.asarray(alone), np.asarray(together[1]))
    assert together[2].input_size == (64, 32)  # ran separately, in its own size group


def test_seed_changes_noise_reproducibly(extractor):
    image = random_image(50, 70)
    first, second = (np.asarray(extractor.extract(image, seed=s)[0]) for s in (1, 1))
    assert np.array_equal(first, second)
    assert not np.array_equal(first, np.asarray(extractor.extract(image, seed=2)[0]))
    assert not np.array_equal(first, np.asarray(extractor.extract(image, seed=1, ensemble=3)[0]))


def test_explicit_noise_array_and_list(extractor):
    images = [random_image(50, 70, 1), random_image(48, 64, 2)]  # both preprocess to 48x64
    noise = np.random.default_rng(0).standard_normal((2, 3, 4, 6, 8), dtype=np.float32)
    from_array = extractor.extract(images, noise=noise)
    from_list = extractor.extract(images, noise=list(noise))
    for fm, expected_noise, image in zip(from_array, noise, images):
        pixels = extractor.prepare(image).pixels
        expected = tiny_reference(extractor.export_dir, pixels[None], expected_noise[None])
        np.testing.assert_allclose(np.asarray(fm), expected, atol=2e-6)
    for a, b in zip(from_array, from_list):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_wrong_noise_is_refused_clearly(extractor):
    image = random_image(50, 70)
    with pytest.raises(InputError, match=r"expected \[E, 4, 6, 8\]"):
        extractor.extract(image, noise=[np.zeros((2, 4, 6, 7), np.float32)])
    with pytest.raises(InputError, match="float32"):
        extractor.extract(image, noise=[np.zeros((2, 4, 6, 8), np.float64)])
    with pytest.raises(InputError, match="B=1"):
        extractor.extract(image, noise=np.zeros((2, 2, 4, 6, 8), np.float32))
    with pytest.raises(InputError, match="same-size"):
        extractor.extract([image, random_image(90, 40)], noise=np.zeros((2, 2, 4, 6, 8), np.float32))
    with pytest.raises(InputError, match="either noise= or seed="):
        extractor.extract(image, seed=1, noise=[np.zeros((2, 4, 6, 8), np.float32)])
    with pytest.raises(InputError, match="ensemble=3"):
        extractor.extract(image, ensemble=3, noise=[np.zeros((2, 4, 6, 8), np.float32)])


def test_run_checks_the_contract(extractor):
    image = np.zeros((1, 3, 48, 64), np.float32)
    noise = np.zeros((1, 2, 4, 6, 8), np.float32)
    assert extractor.run(image, noise).shape == (1, 32, 3, 4)
    with pytest.raises(InputError, match="multiples of 16"):
        extractor.run(np.zeros((1, 3, 50, 64), np.float32), noise)
    with pytest.raises(InputError, match="float32"):
        extractor.run(image.astype(np.float64), noise)
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        extractor.run(np.zeros((1, 4, 48, 64), np.float32), noise)
    with pytest.raises(InputError, match="noise has shape"):
        extractor.run(image, np.zeros((1, 2, 4, 12, 16), np.float32))
    with pytest.raises(InputError, match="5 axes"):
        extractor.run(image, np.zeros((1, 4, 6, 8), np.float32))


def test_runner_checks_feed_against_graph(export_dir):
    with OnnxrtRunner(SessionFromOnnx(export_dir / MODEL_FILE)) as runner:
        assert set(runner.input_metadata()) == {"image", "noise"}
        with pytest.raises(InputError, match="graph takes"):
            runner.infer({"image": np.zeros((1, 3, 16, 16), np.float32)})
        with pytest.raises(InputError, match="float32"):
            runner.infer(
                {"image": np.zeros((1, 3, 16, 16), np.float16), "noise": np.zeros((1, 1, 4, 2, 2), np.float32)}
            )
    with pytest.raises(BackendError, match="not active"):
        runner.infer({})


def test_tampered_weights_are_refused(export_dir, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(export_dir, copy)
    data = bytearray((copy / MODEL_DATA_FILE).read_bytes())
    data[10] ^= 0xFF  # same size, different content
    (copy / MODEL_DATA_FILE).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256.*does not match the manifest"):
        ditf_runtime.load(copy)
    (copy / MODEL_DATA_FILE).write_bytes(bytes(data[:-4]))
    with pytest.raises(ManifestError, match="bytes but the manifest records"):
        ditf_runtime.load(copy)
    with ditf_runtime.load(export_dir, verify=False):
        pass


def test_missing_manifest_or_folder(export_dir, tmp_path):
    copy = tmp_path / "no_manifest"
    shutil.copytree(export_dir, copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(ManifestError, match="not a finished ditf export"):
        ditf_runtime.load(copy)
    with pytest.raises(ManifestError, match="not a folder"):
        ditf_runtime.load(tmp_path / "nowhere")


def test_manifest_with_other_io_names_is_refused(export_dir, tmp_path):
    copy = tmp_path / "renamed"
    shutil.copytree(export_dir, copy)
    manifest = Manifest.load(copy)
    renamed = type(manifest.inputs[0])("pixels", "float32", manifest.inputs[0].shape)
    Manifest(**{**manifest.__dict__, "inputs": (renamed, manifest.inputs[1])}).save(copy)
    with pytest.raises(ManifestError, match="expects inputs"):
        ditf_runtime.load(copy)


def test_no_silent_fallback_to_cpu(export_dir):
    with pytest.raises(BackendError, match="CUDAExecutionProvider.*not available.*Refusing to fall back"):
        ditf_runtime.load(export_dir, device="cuda", backend="onnxruntime")
    with pytest.raises(BackendError, match="not available"):
        ditf_runtime.load(export_dir, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendError, match="unknown device"):
        ditf_runtime.load(export_dir, device="gpu")
    with pytest.raises(BackendError, match="unknown backend"):
        ditf_runtime.load(export_dir, backend="torch")
    with pytest.raises(BackendError, match="runs on a GPU"):
        ditf_runtime.load(export_dir, backend="tensorrt", device="cpu")


def test_auto_on_cpu_is_onnxruntime(export_dir):
    with ditf_runtime.load(export_dir, backend="auto") as loaded:
        assert loaded.backend == "onnxruntime"


def test_tensorrt_backend_says_it_is_missing(export_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # neither flavour imports
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(BackendError, match="no TensorRT is installed here"):
        ditf_runtime.load(export_dir, backend="tensorrt", device="cuda")


def test_geometry_comes_from_the_manifest(tmp_path):
    geometry = with_geometry(latent_channels=6, feature_channels=8, vae_stride=4, feature_stride=8, size_multiple=8)
    build_tiny_export(
        tmp_path, geometry=geometry, preprocess=Preprocess(long_side=40), ensemble=1, reference_shape=(1, 24, 40)
    )
    with ditf_runtime.load(tmp_path) as loaded:
        assert loaded.verify_reference()
        (fm,) = loaded.extract(Image.new("RGB", (100, 50), (30, 60, 90)))
        assert fm.input_size == (16, 40)  # height 50 * 40/100 = 20 = 2.5 multiples of 8 -> round half to even -> 2
    assert fm.shape == (1, 8, fm.input_size[0] // 8, fm.input_size[1] // 8) and fm.stride == 8
