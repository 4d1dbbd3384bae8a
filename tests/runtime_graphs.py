"""Tiny ONNX graphs with the exact export contract, so the runtime is testable without the exporter.

The graph (built with onnx.helper, weights in external data like a real export):

    image [B, 3, H, W]            -> AveragePool(fs)                 -> [B, 3, H/fs, W/fs]
    noise [B, E, c, H/vs, W/vs]   -> ReduceMean(E) -> AveragePool(fs/vs) -> [B, c, H/fs, W/fs]
    concat -> 1x1 Conv (C outputs) -> Tanh                           -> features [B, C, H/fs, W/fs]

B, E, H, W are dynamic. `tiny_features` is the same computation in numpy; the export folder
also gets a manifest.json (through the shared Manifest class) and reference.safetensors.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from ditf_runtime.manifest import (
    MODEL_DATA_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    SCHEMA_VERSION,
    Feature,
    Geometry,
    Manifest,
    Preprocess,
    TensorSpec,
    file_record,
)
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

OPSET = 20
IR_VERSION = 10  # what onnxruntime >= 1.17 reads


def tiny_weights(geometry: Geometry, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = 3 + geometry.latent_channels
    weight = rng.standard_normal((geometry.feature_channels, inputs)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(geometry.feature_channels)).astype(np.float32)
    return weight, bias


def tiny_features(
    image: np.ndarray, noise: np.ndarray, weight: np.ndarray, bias: np.ndarray, geometry: Geometry
) -> np.ndarray:
    """The tiny graph in numpy (float64 inside, float32 out)."""
    fs, vs = geometry.feature_stride, geometry.vae_stride
    batch, _, height, width = image.shape
    h, w = height // fs, width // fs
    pooled_image = image.astype(np.float64).reshape(batch, 3, h, fs, w, fs).mean(axis=(3, 5))
    ratio = fs // vs
    mean_noise = noise.astype(np.float64).mean(axis=1)
    pooled_noise = mean_noise.reshape(batch, -1, h, ratio, w, ratio).mean(axis=(3, 5))
    stacked = np.concatenate([pooled_image, pooled_noise], axis=1)
    out = np.einsum("oc,bchw->bohw", weight.astype(np.float64), stacked) + bias[None, :, None, None]
    return np.tanh(out).astype(np.float32)


def tiny_graph(geometry: Geometry, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    fs, vs = geometry.feature_stride, geometry.vae_stride
    c, channels = geometry.latent_channels, geometry.feature_channels
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    noise = helper.make_tensor_value_info(
        "noise", TensorProto.FLOAT, ["batch", "ensemble", c, "latent_height", "latent_width"]
    )
    features = helper.make_tensor_value_info(
        "features", TensorProto.FLOAT, ["batch", channels, "feature_height", "feature_width"]
    )
    initializers = [
        numpy_helper.from_array(weight.reshape(channels, 3 + c, 1, 1), "conv_weight"),
        numpy_helper.from_array(bias, "conv_bias"),
    ]
    nodes = [
        # A Constant node, not an initializer: shape inference cannot read axes from external data.
        helper.make_node(
            "Constant", [], ["ensemble_axis"], value=numpy_helper.from_array(np.array([1], dtype=np.int64))
        ),
        helper.make_node("AveragePool", ["image"], ["pooled_image"], kernel_shape=[fs, fs], strides=[fs, fs]),
        helper.make_node("ReduceMean", ["noise", "ensemble_axis"], ["mean_noise"], keepdims=0),
        helper.make_node(
            "AveragePool",
            ["mean_noise"],
            ["pooled_noise"],
            kernel_shape=[fs // vs, fs // vs],
            strides=[fs // vs, fs // vs],
        ),
        helper.make_node("Concat", ["pooled_image", "pooled_noise"], ["stacked"], axis=1),
        helper.make_node("Conv", ["stacked", "conv_weight", "conv_bias"], ["projected"]),
        helper.make_node("Tanh", ["projected"], ["features"]),
    ]
    graph = helper.make_graph(nodes, "ditf_tiny", [image, noise], [features], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ditf-tests")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"schema_version": str(SCHEMA_VERSION), "family": "tiny"})
    onnx.checker.check_model(model)
    return model


def build_tiny_export(
    out_dir: str | Path,
    *,
    geometry: Geometry | None = None,
    preprocess: Preprocess | None = None,
    ensemble: int = 2,
    seed: int = 0,
    reference_shape: tuple[int, int, int] = (2, 48, 64),  # B, H, W (non-square on purpose)
) -> Manifest:
    """Write DIR/model.onnx(+.data), reference.safetensors and manifest.json; return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    geometry = geometry or Geometry(latent_channels=4, feature_channels=32)
    preprocess = preprocess or Preprocess(long_side=64)
    weight, bias = tiny_weights(geometry, seed)
    model = tiny_graph(geometry, weight, bias)
    onnx.save_model(
        model,
        str(out_dir / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=MODEL_DATA_FILE,
        size_threshold=0,
    )

    rng = np.random.default_rng(seed + 1)
    batch, height, width = reference_shape
    ref_image = rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32)
    ref_noise = rng.standard_normal(
        (batch, ensemble, geometry.latent_channels, height // geometry.vae_stride, width // geometry.vae_stride)
    ).astype(np.float32)
    save_file(
        {
            "image": ref_image,
            "noise": ref_noise,
            "features": tiny_features(ref_image, ref_noise, weight, bias, geometry),
        },
        str(out_dir / REFERENCE_FILE),
    )

    c, channels = geometry.latent_channels, geometry.feature_channels
    manifest = Manifest(
        family="tiny",
        model_name="tiny-random",
        model_source="tests/runtime_graphs.py",
        precision="fp32",
        opset=OPSET,
        feature=Feature(layer=0, block="tiny", timestep=260.0, discard=(), discard_source="none", ensemble=ensemble),
        geometry=geometry,
        preprocess=preprocess,
        inputs=(
            TensorSpec("image", "float32", ("batch", 3, "height", "width")),
            TensorSpec("noise", "float32", ("batch", "ensemble", c, "height/8", "width/8")),
        ),
        outputs=(TensorSpec("features", "float32", ("batch", channels, "height/16", "width/16")),),
        files={name: file_record(out_dir / name) for name in (MODEL_FILE, MODEL_DATA_FILE, REFERENCE_FILE)},
        created="2026-11-26T00:00:00+00:00",
    )
    manifest.save(out_dir)
    return manifest


def tiny_reference(export_dir: str | Path, image: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Numpy features of the tiny export in `export_dir` (weights re-derived from its seed 0)."""
    manifest = Manifest.load(export_dir)
    weight, bias = tiny_weights(manifest.geometry)
    return tiny_features(image, noise, weight, bias, manifest.geometry)


def with_geometry(**changes) -> Geometry:
    return replace(Geometry(latent_channels=4, feature_channels=32), **changes)


def int8_conv_graph(geometry: Geometry, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The export contract with a real-width INT8 convolution, as `ditf-export --int8-convs` writes them:

        image -> Q/DQ -> Conv(16x16, stride 16; int8 weights, per-output-channel scales, float bias) -> Q/DQ
        noise -> ReduceMean(E) -> AveragePool -> 1x1 Conv (float)         -> added -> Tanh -> features

    With feature_channels >= 256 the per-channel scales and the bias (1 KiB and more) go to the external data
    file, as in every real-size VAE. Returns the model and its INT8 conv's constants (by initializer name)."""
    fs, vs = geometry.feature_stride, geometry.vae_stride
    c, channels = geometry.latent_channels, geometry.feature_channels
    rng = np.random.default_rng(seed)
    consts = {
        "conv_w_int8": rng.integers(-127, 128, (channels, 3, fs, fs)).astype(np.int8),
        "conv_w_scale": rng.uniform(0.5e-3, 1.5e-3, channels).astype(np.float32),
        "conv_w_zero": np.zeros(channels, np.int8),
        "conv_bias": rng.normal(0, 0.5, channels).astype(np.float32),
        "x_scale": np.float32(1 / 127), "y_scale": np.float32(4 / 127), "zero": np.int8(0),
        "noise_w": (0.3 * rng.standard_normal((channels, c, 1, 1))).astype(np.float32),
    }
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    noise = helper.make_tensor_value_info(
        "noise", TensorProto.FLOAT, ["batch", "ensemble", c, "latent_height", "latent_width"])
    features = helper.make_tensor_value_info(
        "features", TensorProto.FLOAT, ["batch", channels, "feature_height", "feature_width"])
    nodes = [
        helper.make_node("Constant", [], ["ensemble_axis"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("QuantizeLinear", ["image", "x_scale", "zero"], ["image_q"]),
        helper.make_node("DequantizeLinear", ["image_q", "x_scale", "zero"], ["image_dq"]),
        helper.make_node("DequantizeLinear", ["conv_w_int8", "conv_w_scale", "conv_w_zero"], ["conv_w"], axis=0),
        helper.make_node("Conv", ["image_dq", "conv_w", "conv_bias"], ["conv_out"], kernel_shape=[fs, fs],
                         strides=[fs, fs], name="patch_conv"),
        helper.make_node("QuantizeLinear", ["conv_out", "y_scale", "zero"], ["conv_q"]),
        helper.make_node("DequantizeLinear", ["conv_q", "y_scale", "zero"], ["conv_dq"]),
        helper.make_node("ReduceMean", ["noise", "ensemble_axis"], ["mean_noise"], keepdims=0),
        helper.make_node("AveragePool", ["mean_noise"], ["pooled_noise"], kernel_shape=[fs // vs, fs // vs],
                         strides=[fs // vs, fs // vs]),
        helper.make_node("Conv", ["pooled_noise", "noise_w"], ["noise_proj"]),
        helper.make_node("Add", ["conv_dq", "noise_proj"], ["summed"]),
        helper.make_node("Tanh", ["summed"], ["features"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "ditf_int8_conv", [image, noise], [features], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ditf-tests")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"schema_version": str(SCHEMA_VERSION), "family": "tiny"})
    onnx.checker.check_model(model)
    return model, consts


def build_int8_conv_export(out_dir: str | Path, *, channels: int = 256, seed: int = 0,
                           reference_shape: tuple[int, int, int] = (2, 48, 64)) -> Manifest:
    """An int8 export folder of `int8_conv_graph` (external data like a real export: every initializer of
    1 KiB or more), its reference the graph's own onnxruntime output; returns the manifest."""
    import onnxruntime as ort

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    geometry = Geometry(latent_channels=4, feature_channels=channels)
    model, _ = int8_conv_graph(geometry, seed)
    onnx.save_model(model, str(out_dir / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=MODEL_DATA_FILE, size_threshold=1024)
    rng = np.random.default_rng(seed + 1)
    batch, height, width = reference_shape
    image = rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32)
    noise = rng.standard_normal((batch, 2, 4, height // geometry.vae_stride, width // geometry.vae_stride)
                                ).astype(np.float32)
    session = ort.InferenceSession(str(out_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    save_file({"image": image, "noise": noise, "features": session.run(None, {"image": image, "noise": noise})[0]},
              str(out_dir / REFERENCE_FILE))
    manifest = Manifest(
        family="tiny", model_name="tiny-int8-conv", model_source="tests/runtime_graphs.py", precision="int8",
        opset=OPSET,
        feature=Feature(layer=0, block="tiny", timestep=260.0, discard=(), discard_source="none", ensemble=2),
        geometry=geometry, preprocess=Preprocess(long_side=64),
        inputs=(TensorSpec("image", "float32", ("batch", 3, "height", "width")),
                TensorSpec("noise", "float32", ("batch", "ensemble", 4, "height/8", "width/8"))),
        outputs=(TensorSpec("features", "float32", ("batch", channels, "height/16", "width/16")),),
        files={name: file_record(out_dir / name) for name in (MODEL_FILE, MODEL_DATA_FILE, REFERENCE_FILE)},
        created="2026-11-26T00:00:00+00:00",
    )
    manifest.save(out_dir)
    return manifest
