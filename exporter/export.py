"""The one export loop. It never names a family: everything family-specific comes from the adapter.

Order (after optimum's export_pytorch): resolve + defaults, validate every input before any work,
load truncated weights, bake conditioning, build the feature graph, torch.onnx.export (dynamo,
opset 20, dynamic B/E/H/W), check the graph's ops, precision pass, parity against PyTorch, manifest,
then one atomic rename of the finished folder.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ditf_runtime.manifest import (
    MODEL_DATA_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    Feature,
    Geometry,
    Manifest,
    Preprocess,
    TensorSpec,
    file_record,
    sha256_file,
)

from . import graph_checks, parity
from .families.base import ExportInputError, ExportOptions, FamilyAdapter
from .feature_graph import FeatureGraph, LatentEncoder
from .loading import ModelSource, load_truncated_transformer, load_vae, resolve_source, vae_weight_files
from .registry import adapter_for

OPSET = 20
# Example sizes for tracing: B, E >= 2 and a non-square image, else torch.export specialises them.
TRACE_BATCH, TRACE_ENSEMBLE, TRACE_HW = 2, 2, (64, 96)
TRACE_FRAMES = 3  # video families: frames in the trace example (>= 2, and unlike B and E)
# Parity sizes: several (H, W) through the one dynamic graph.
PARITY_SIZES = ((64, 96), (112, 80))


@dataclass
class ExportRequest:
    """Everything `ditf-export` takes; None means "the model's registry default"."""

    model: str
    out: Path
    layer: int | None = None
    timestep: float | None = None
    guidance: float | None = None
    guidance_given: bool = False  # distinguishes "--guidance not given" from a default
    prompt: str | None = ""
    prompt_embeds: Path | None = None
    discard: str | None = None  # "154,1446" | "none" | "auto" | None (registry default)
    ensemble: int | None = None
    image_size: int | None = None
    class_label: int | None = None
    text_max_length: int | None = None  # T5 tokens; None: the registry's, else the family's default
    precision: str = "fp32"
    calib_images: Path | None = None
    massive_threshold: float = 100.0  # --discard auto: channels whose median |h_K| ratio exceeds this (paper: 100x)
    force: bool = False
    parity_sizes: tuple[tuple[int, int], ...] = PARITY_SIZES
    progress: Callable[[str], None] = field(default=lambda msg: None)


class ParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch reference computes."""


def _default(spec, attr: str, fallback: Any) -> tuple[Any, str]:
    d = getattr(spec, attr, None) if spec is not None else None
    if d is None:
        return fallback, "family fallback"
    return d.value, d.source


def parse_discard(text: str, hidden: int) -> tuple[int, ...]:
    try:
        channels = tuple(sorted({int(c) for c in text.split(",") if c.strip()}))
    except ValueError as exc:
        raise ExportInputError(f"--discard {text!r}: expected a comma list of channel indices, 'none' or 'auto'") from exc
    bad = [c for c in channels if not 0 <= c < hidden]
    if bad:
        raise ExportInputError(f"--discard: channels {bad} are outside this model's hidden size 0..{hidden - 1}")
    return channels


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise ExportInputError(f"--out {out} already exists; pass --force to replace it (or choose another folder)")
    if out.exists() and not out.is_dir():
        raise ExportInputError(f"--out {out} exists and is not a folder")


def plan(request: ExportRequest) -> tuple[ModelSource, FamilyAdapter, ExportOptions, dict[str, Any]]:
    """Resolve the model and every default, and validate all user input, before any heavy work."""
    _check_out(Path(request.out), request.force)
    source = resolve_source(request.model)
    adapter = adapter_for(source.family)
    config = source.transformer_config
    spec = source.spec
    hidden = adapter.hidden_size(config)
    notes: list[str] = []
    if spec is None:
        notes.append("no registry defaults apply to this model (unknown folder or different hidden size): "
                     "no default discard channels; pass --discard or --discard auto")

    layer, layer_src = (request.layer, "user") if request.layer is not None else _default(spec, "layer", None)
    if layer is None:
        raise ExportInputError(f"--layer is required for {source.name} (no registry default); valid: "
                               f"0..{adapter.num_layers(config) - 1}")
    adapter.check_layer(config, int(layer))
    timestep, _ = (request.timestep, "user") if request.timestep is not None else _default(spec, "timestep", 260)
    if not 0 <= float(timestep) <= 1000:
        raise ExportInputError(f"--timestep {timestep}: must be in [0, 1000]")
    if request.guidance_given:
        guidance = request.guidance
    else:
        guidance = spec.guidance.value if (spec is not None and spec.guidance is not None) else None
        if guidance is None and config.get("guidance_embeds", False):
            guidance = 3.5
            notes.append("guidance 3.5 (FLUX.1-dev default) used: the model has a guidance embedding")
    if request.discard is None:
        discard, discard_src = (tuple(spec.discard.value), "registry") if spec is not None else ((), "none")
    elif request.discard == "none":
        discard, discard_src = (), "none"
    elif request.discard == "auto":
        if request.calib_images is None:
            raise ExportInputError("--discard auto finds the massive channels from data: pass --calib-images DIR "
                                   "(a folder of real photos, e.g. examples/images)")
        if not request.massive_threshold > 1:
            raise ExportInputError(f"--massive-threshold {request.massive_threshold}: must be > 1 (paper: 100)")
        discard, discard_src = (), "auto"  # detected after loading (export: _detect_discard)
    else:
        discard, discard_src = parse_discard(request.discard, hidden), "user"
    if any(not 0 <= c < hidden for c in discard):
        raise ExportInputError(f"discard channels {discard} are outside this model's hidden size {hidden}")
    ensemble, _ = (request.ensemble, "user") if request.ensemble is not None else _default(spec, "ensemble", 8)
    if int(ensemble) < 1:
        raise ExportInputError("--ensemble must be >= 1")
    image_size, _ = (request.image_size, "user") if request.image_size is not None else _default(spec, "image_size", 640)
    if int(image_size) % 16 or int(image_size) < 16:
        raise ExportInputError(f"--image-size {image_size}: must be a positive multiple of 16")

    prompt_embeds = None
    if request.prompt_embeds is not None:
        from .text import load_prompt_embeds

        prompt_embeds = load_prompt_embeds(request.prompt_embeds)
    text_len = request.text_max_length or (spec.text_max_length if spec is not None else None)
    options = ExportOptions(
        layer=int(layer), timestep=float(timestep), discard=tuple(discard), guidance=guidance,
        prompt=None if prompt_embeds is not None else (request.prompt or ""), prompt_embeds=prompt_embeds,
        class_label=request.class_label, text_max_length=text_len, image_size=int(image_size),
    )
    adapter.check_options(config, options)
    adapter.noise_coefficients(source, options)  # the timestep must fit the family's noise schedule
    if prompt_embeds is not None:  # check shapes now, not after loading the transformer
        adapter.conditioning(source, config, options)
    if request.precision not in ("fp32", "fp16", "bf16", "int8"):
        raise ExportInputError(f"--precision {request.precision!r}: choose fp32, fp16, bf16 or int8")
    if adapter.takes_frames and request.precision != "fp32":
        raise ExportInputError(f"--precision {request.precision}: video families ({source.family}) export fp32 only "
                               "in this build; use --precision fp32")
    if request.precision == "int8" and request.calib_images is None:
        raise ExportInputError("--precision int8 needs --calib-images DIR: a folder of real images for the "
                               "activation ranges (e.g. --calib-images examples/images; 5-50 photos is typical)")
    if request.calib_images is not None:
        from ditf_calib.data import CalibrationError, check_folder

        try:
            check_folder(request.calib_images)  # every image decodes, before any heavy work
        except CalibrationError as exc:
            raise ExportInputError(str(exc)) from None
        if request.precision == "fp32" and discard_src != "auto":
            notes.append("--calib-images ignored: fp32 needs no calibration")
    extra = {"ensemble": int(ensemble), "image_size": int(image_size), "discard_source": discard_src,
             "layer_source": layer_src, "notes": notes}
    return source, adapter, options, extra


def build_graph(source: ModelSource, adapter: FamilyAdapter, options: ExportOptions,
                dtype: torch.dtype = torch.float32) -> tuple[FeatureGraph, dict[str, Any]]:
    """The PyTorch module that is both the export source and the parity reference."""
    config = source.transformer_config
    transformer, load_report = load_truncated_transformer(source, adapter, options.layer, dtype)
    conditioning = adapter.conditioning(source, config, options)
    parts = adapter.feature_parts(transformer, conditioning, options)
    a, b = adapter.noise_coefficients(source, options)
    graph = FeatureGraph(LatentEncoder(load_vae(source)), parts, a, b, options.discard).eval()
    load_report["notes"] = parts.notes
    return graph, load_report


def export_onnx(graph: FeatureGraph, path: Path, latent_channels: int) -> None:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    ensemble = Dim("ensemble", min=1, max=256)
    h16 = Dim("height_16", min=1, max=1024)
    w16 = Dim("width_16", min=1, max=1024)
    image = torch.rand(TRACE_BATCH, 3, *TRACE_HW) * 2 - 1
    noise = torch.randn(TRACE_BATCH, TRACE_ENSEMBLE, latent_channels, TRACE_HW[0] // 8, TRACE_HW[1] // 8)
    dynamic_shapes = {
        "image": {0: batch, 2: 16 * h16, 3: 16 * w16},
        "noise": {0: batch, 1: ensemble, 3: 2 * h16, 4: 2 * w16},
    }
    if graph.max_frames is not None:  # video: a frame axis after batch (image) / after ensemble (noise)
        frames = Dim("frames", min=2, max=graph.max_frames)
        f = min(TRACE_FRAMES, graph.max_frames)
        image = image[:, None].repeat(1, f, 1, 1, 1)
        noise = noise[:, :, None].repeat(1, 1, f, 1, 1, 1)
        dynamic_shapes = {"image": {0: batch, 1: frames, 3: 16 * h16, 4: 16 * w16},
                          "noise": {0: batch, 1: ensemble, 2: frames, 4: 2 * h16, 5: 2 * w16}}
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (image, noise), dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic_shapes,
            input_names=["image", "noise"], output_names=["features"], external_data=True,
            verbose=False,
        )
    program.save(str(path), external_data=True)


def _tool_versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime

    from ditf_runtime._version import __version__ as runtime_version

    from . import __version__

    return {"ditf_export": __version__, "ditf_runtime": runtime_version,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def export(request: ExportRequest) -> Manifest:
    """Run the whole export; returns the manifest of the finished folder at request.out."""
    say = request.progress
    _quiet_libraries()
    out = Path(request.out)
    source, adapter, options, extra = plan(request)
    say(f"model {source.name} ({source.family}) from {source.path}; layer {options.layer} = "
        f"{adapter.block_name(source.transformer_config, options.layer)}")
    t0 = time.perf_counter()
    graph, load_report = build_graph(source, adapter, options)
    say(f"loaded {load_report['tensors_read']}/{load_report['tensors_in_checkpoint']} transformer tensors "
        f"({load_report['bytes_read'] / 1e6:.1f} MB)")
    massive_ratios = _detect_discard(request, graph, options, extra, say) if extra["discard_source"] == "auto" else {}
    latent_channels = graph.encoder.latent_channels
    feature_channels = int(graph.head.shift.shape[0])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        say("exporting ONNX (torch.onnx dynamo, opset 20, dynamic batch/ensemble/height/width)")
        export_onnx(graph, tmp / MODEL_FILE, latent_channels)
        graph_checks.check_graph(tmp / MODEL_FILE)
        step = _precision_step(request, tmp / MODEL_FILE, graph, options, extra, say)
        try:
            graph_checks.check_graph(tmp / MODEL_FILE)
            say(f"running parity: onnxruntime vs PyTorch ({request.precision})")
            report = parity.run_parity(graph, step.parity_model, latent_channels, request.parity_sizes,
                                       request.precision, reference_path=tmp / REFERENCE_FILE,
                                       extra_feeds=tuple(step.parity_feeds), frames=graph.max_frames)
        finally:
            step.cleanup()
        report["precision"] = {"precision": request.precision, **step.report}
        if step.backend:
            report["backend"] = step.backend
        for line in report["summary"]:
            say("  " + line)
        if not report["passed"]:
            raise ParityError("the exported graph failed parity against PyTorch:\n  " + "\n  ".join(report["summary"]))

        manifest = Manifest(
            family=source.family,
            model_name=source.name,
            model_source=str(source.path),
            precision=request.precision,
            opset=OPSET,
            feature=Feature(
                layer=options.layer, block=adapter.block_name(source.transformer_config, options.layer),
                timestep=options.timestep, discard=options.discard, discard_source=extra["discard_source"],
                ensemble=extra["ensemble"], prompt=options.prompt,
                prompt_embeds_sha256=sha256_file(request.prompt_embeds) if request.prompt_embeds else None,
                guidance=options.guidance, class_label=options.class_label, noising=adapter.noising,
                massive_channel_ratios=massive_ratios,
                notes=tuple(extra["notes"] + load_report["notes"] + [
                    "latent: VAE posterior mean (the authors sample; deterministic by choice)",
                    "ensemble: the latent is encoded once and shared by the E noise draws",
                ] + (["prompt: empty (the authors caption each image; a baked prompt means one graph per prompt)"]
                     if options.prompt == "" else [])),
            ),
            geometry=Geometry(latent_channels=latent_channels, feature_channels=feature_channels,
                              vae_stride=8, feature_stride=8 * graph.patch_size, size_multiple=8 * graph.patch_size,
                              frame_axis=None if graph.max_frames is None else 1),
            preprocess=Preprocess(long_side=extra["image_size"]),
            **_io_specs(latent_channels, feature_channels, video=graph.max_frames is not None),
            files={name: file_record(tmp / name) for name in (MODEL_FILE, MODEL_DATA_FILE, REFERENCE_FILE)},
            source_weights={str(p.relative_to(source.path)): sha256_file(p)
                            for p in [*load_report["files"], *vae_weight_files(source)]},
            parity=report,
            tools=_tool_versions(),
            tensorrt_profiles=_trt_profiles(extra["image_size"], extra["ensemble"], latent_channels,
                                            graph.max_frames),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        graph_checks.finalize(tmp / MODEL_FILE, manifest)
        # metadata changed model.onnx: record its final hash
        files = dict(manifest.files)
        files[MODEL_FILE] = file_record(tmp / MODEL_FILE)
        manifest = Manifest(**{**manifest.__dict__, "files": files})
        manifest.save(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"done in {time.perf_counter() - t0:.1f} s: {out}")
    return manifest


def _detect_discard(request: ExportRequest, graph: FeatureGraph, options: ExportOptions, extra: dict[str, Any],
                    say: Callable[[str], None]) -> dict[str, float]:
    """--discard auto: find the massive channels with this very graph over --calib-images, then discard them."""
    from ditf_calib.data import CalibrationError
    from ditf_calib.massive import detect_for_graph

    say(f"detecting massive channels over {request.calib_images} (ratio > {request.massive_threshold:g})")
    try:
        found = detect_for_graph(graph, request.calib_images, long_side=extra["image_size"],
                                 ensemble=extra["ensemble"], threshold=request.massive_threshold)
    except CalibrationError as exc:
        raise ExportInputError(str(exc)) from None
    for line in found.table(8).splitlines():
        say("  " + line)
    graph.head.set_discard(found.channels)
    options.discard = found.channels
    extra["notes"].append(f"discard: detected over {len(found.image_names)} calibration images, channels whose "
                          f"median |h_K| is > {found.threshold:g}x the median channel")
    return found.manifest_ratios()


def _precision_step(request: ExportRequest, model_path: Path, graph: FeatureGraph, options: ExportOptions,
                    extra: dict[str, Any], say: Callable[[str], None]):
    """Rewrite the checked FP32 graph to request.precision (ditf_calib.apply); FP32 is a no-op."""
    from ditf_calib.apply import apply_precision
    from ditf_calib.data import CalibrationError, load_calibration_set
    from ditf_calib.int8 import Int8Config
    from ditf_calib.precision import PrecisionError

    latent_channels = graph.encoder.latent_channels
    multiple = 8 * graph.patch_size
    calibration = None
    if request.calib_images is not None and request.precision != "fp32":
        try:
            calibration = load_calibration_set(request.calib_images, long_side=extra["image_size"],
                                               latent_channels=latent_channels, size_multiple=multiple,
                                               ensemble=min(extra["ensemble"], 2))
        except CalibrationError as exc:
            raise ExportInputError(str(exc)) from None
    frames = None if graph.max_frames is None else min(graph.max_frames, 4)  # video: short still clips
    check_feeds = [parity.sample_inputs(2, 2, latent_channels, hw, seed=2000 + i, frames=frames)
                   for i, hw in enumerate(request.parity_sizes)]
    size = max(multiple, min(extra["image_size"], 256) // multiple * multiple)
    config = Int8Config(protect_channels=tuple(options.discard), protect_width=int(graph.head.shift.shape[0]))
    try:
        return apply_precision(model_path, request.precision, check_feeds=check_feeds, calibration=calibration,
                               int8_config=config, parity_size=size, frames=frames, say=say)
    except PrecisionError as exc:
        raise ExportInputError(str(exc)) from None


def _quiet_libraries() -> None:
    """Library chatter (per-tensor progress bars, torchvision-absent warnings) would bury our progress lines."""
    import logging

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _io_specs(latent_channels: int, feature_channels: int, video: bool) -> dict[str, tuple[TensorSpec, ...]]:
    """Graph I/O for the manifest; video families carry a frame axis after batch (ensemble, for noise)."""
    f = ("frames",) if video else ()
    return {
        "inputs": (TensorSpec("image", "float32", ("batch", *f, 3, "height", "width")),
                   TensorSpec("noise", "float32", ("batch", "ensemble", *f, latent_channels, "height/8", "width/8"))),
        "outputs": (TensorSpec("features", "float32", ("batch", *f, feature_channels, "height/16", "width/16")),),
    }


def _trt_profiles(image_size: int, ensemble: int, latent_channels: int,
                  max_frames: int | None = None) -> dict[str, Any]:
    """min/opt/max shapes for a TensorRT optimization profile, derived from one shape function."""

    def shapes(b: int, e: int, h: int, w: int, f: int | None = None) -> dict[str, list[int]]:
        fr = [] if f is None else [f]
        return {"image": [b, *fr, 3, h, w], "noise": [b, e, *fr, latent_channels, h // 8, w // 8]}

    if max_frames is not None:
        return {"min": shapes(1, 1, 256, 256, 2), "opt": shapes(1, ensemble, image_size, image_size, max_frames),
                "max": shapes(1, max(ensemble, 8), 1024, 1024, max_frames)}
    return {"min": shapes(1, 1, 256, 256), "opt": shapes(1, ensemble, image_size, image_size),
            "max": shapes(4, max(ensemble, 8), 1024, 1024)}


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an existing one (only with --force) is swapped out first."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time())}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def reference_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))
