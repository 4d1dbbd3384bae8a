"""Shared fixtures: built-in tiny models and their exports are made once per run (session scope); the
hand-built torch-free tiny export once per test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


_OWN_CACHE: list[str] = []  # the built-in model cache this run created, removed when it ends


def pytest_configure(config):
    # Keep the built-in model cache inside the test run: never the user's ~/.cache, never a download.
    if "DITF_CACHE" not in os.environ:
        import tempfile

        os.environ["DITF_CACHE"] = tempfile.mkdtemp(prefix="ditf-cache-")
        _OWN_CACHE.append(os.environ["DITF_CACHE"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_unconfigure(config):
    import shutil

    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("DITF_CACHE") == folder:
            del os.environ["DITF_CACHE"]


@pytest.fixture(scope="session")
def flux_tiny_dir(tmp_path_factory) -> Path:
    """A FLUX-architecture pipeline folder (transformer, vae, CLIP + T5 with offline tokenizers)."""
    from ditf_export.tiny import build_flux_tiny

    return build_flux_tiny(tmp_path_factory.mktemp("models") / "flux-tiny")


def _export(model: str, out: Path, **kw):
    from ditf_export.export import ExportRequest, export

    return export(ExportRequest(model=model, out=out, **kw))


@pytest.fixture(scope="session")
def flux_tiny_export(tmp_path_factory, flux_tiny_dir) -> Path:
    """flux-tiny exported at layer 3 (first single-stream block), planted channels 7, 41 discarded."""
    out = tmp_path_factory.mktemp("exports") / "flux-tiny-l3"
    _export(str(flux_tiny_dir), out, layer=3, discard="7,41", ensemble=2, image_size=128, text_max_length=32)
    return out


@pytest.fixture(scope="session")
def flux_tiny_cpu_variant(tmp_path_factory, flux_tiny_export) -> Path:
    """A copy of flux_tiny_export with its CPU variant (`ditf optimize-cpu`): model.cpu.onnx + model.cpu.json."""
    import shutil

    from ditf_runtime.cpu_rewrite import make_cpu_variant

    out = tmp_path_factory.mktemp("cpu-variant") / "export"
    shutil.copytree(flux_tiny_export, out)
    make_cpu_variant(out)
    return out


@pytest.fixture(scope="session")
def flux_tiny_export_double(tmp_path_factory, flux_tiny_dir) -> Path:
    """flux-tiny exported at layer 1 (the last double-stream block)."""
    out = tmp_path_factory.mktemp("exports") / "flux-tiny-l1"
    _export(str(flux_tiny_dir), out, layer=1, discard="7,41", ensemble=2, image_size=128, text_max_length=32)
    return out


@pytest.fixture(scope="session")
def family_tiny_dir(tmp_path_factory):
    """`family_tiny_dir("sd3")` -> a tiny pipeline folder of that family (tiny.TINY_BUILDERS), built once per session."""
    from ditf_export.tiny import TINY_BUILDERS

    root = tmp_path_factory.mktemp("family-models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = TINY_BUILDERS[family](root / f"{family}-tiny")
        return built[family]

    return get


# -- precision exports (issue 4): one folder per precision, same model, layer and sizes as flux_tiny_export --

EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="session")
def flux_tiny_precision_export(tmp_path_factory, flux_tiny_dir):
    """`flux_tiny_precision_export("fp16" | "bf16" | "int8" | "fp8")` -> that export folder, built once per session.

    fp16, int8 and fp8 use examples/images for calibration / the range check; bf16 uses random inputs only.
    """
    root = tmp_path_factory.mktemp("precision-exports")
    built: dict[str, Path] = {}

    def get(precision: str) -> Path:
        if precision not in built:
            out = root / f"flux-tiny-l3-{precision}"
            calib = EXAMPLE_IMAGES if precision in ("fp16", "int8", "fp8") else None
            _export(str(flux_tiny_dir), out, layer=3, discard="7,41", ensemble=2, image_size=128,
                    text_max_length=32, precision=precision, calib_images=calib)
            built[precision] = out
        return built[precision]

    return get


# -- DINOv2 (issue 12): the built-in tiny models (registry builtins), exported once per session --


@pytest.fixture(scope="session")
def dinov2_tiny_export(tmp_path_factory):
    """`dinov2_tiny_export(registers=False, precision="fp32")` -> the export folder of dinov2-tiny (or
    dinov2-tiny-reg): the default feature (last layer after the final LayerNorm), long side 224; int8
    calibrated on examples/images."""
    root = tmp_path_factory.mktemp("dinov2-exports")
    built: dict[tuple[bool, str], Path] = {}

    def get(registers: bool = False, precision: str = "fp32") -> Path:
        if (registers, precision) not in built:
            name = ("dinov2-tiny-reg" if registers else "dinov2-tiny") + ("" if precision == "fp32" else f"-{precision}")
            calib = EXAMPLE_IMAGES if precision == "int8" else None
            _export(name.removesuffix(f"-{precision}"), root / name, precision=precision, calib_images=calib)
            built[(registers, precision)] = root / name
        return built[(registers, precision)]

    return get


# -- the hand-built tiny export (tests/runtime_graphs.py: numpy + onnx, no torch) -----------------


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """runtime_graphs.build_tiny_export's folder, one per test module (modules write engines, CPU variants
    or repositories into it, so none shares another's)."""
    from runtime_graphs import build_tiny_export

    folder = tmp_path_factory.mktemp("tiny_export")
    build_tiny_export(folder)
    return folder


@pytest.fixture
def spair_pair_without_images(tmp_path) -> Path:
    """An SPair-71k folder with one test pair and no images: an eval-spair run stops at its first image."""
    root = tmp_path / "spair"
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "PairAnnotation" / "test" / "0:cat.json").write_text(
        '{"src_imname": "a.jpg", "trg_imname": "b.jpg", "category": "cat", "src_kps": [[1, 1]], '
        '"trg_kps": [[1, 1]], "trg_bndbox": [0, 0, 10, 10]}')
    return root
