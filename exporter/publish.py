"""Step 6 of an export: the manifest (the contract the runtime reads); the export loop then renames the
finished folder into place (ditf_runtime.files.staged_folder).

Everything shape-related in the manifest (geometry, I/O specs, TensorRT profiles) comes from the plan's
GraphIO; everything measured from the parity report; nothing is computed twice.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ditf_calib.graph_io import FRAMES, NOISE, GraphIO, Sizes
from ditf_runtime.manifest import (
    MODEL_DATA_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    Feature,
    Manifest,
    Preprocess,
    file_record,
    sha256_file,
)
from ditf_runtime.verification import stamp_export

from . import graph_checks
from .build import BuiltGraph
from .loading import vae_weight_files
from .onnx_export import MIN_FRAMES, OPSET
from .parity import ParityReport
from .plan import ExportPlan

# TensorRT profile: sides from 256 to 1024 px (rounded to the size multiple), batch up to 4 images or
# one clip, E up to 8 (or the export's default, if larger); widened to hold reference.safetensors' inputs, so
# an engine built from the manifest's profile can run `verify_reference` (issue 23).
PROFILE_SIDES = (256, 1024)
PROFILE_MAX_BATCH = {False: 4, True: 1}  # keyed by "the graph has frames"
PROFILE_MAX_ENSEMBLE = 8


def write_manifest(plan: ExportPlan, built: BuiltGraph, parity: ParityReport, massive_ratios: dict[str, float],
                   folder: Path) -> Manifest:
    """The manifest of the finished graph in `folder`: ONNX metadata written first (graph_checks.finalize),
    then every file hashed once, then manifest.json."""
    io, options, source = plan.io, plan.options, plan.source
    prompt_note = ("prompt: empty (the authors caption each image; a baked prompt means one graph per prompt)",)
    draft = Manifest(
        family=source.family,
        model_name=source.name,
        model_source=str(source.path),
        precision=plan.precision.value,
        opset=OPSET,
        feature=Feature(
            layer=options.layer, block=plan.block, timestep=options.timestep, discard=options.discard,
            discard_source=plan.discard_source, head=options.head, ensemble=plan.ensemble, prompt=options.prompt,
            prompt_embeds_sha256=sha256_file(plan.prompt_embeds_file) if plan.prompt_embeds_file else None,
            guidance=options.guidance, class_label=options.class_label, noising=plan.adapter.noising,
            latent="mean" if io.input(NOISE) is not None else "none", massive_channel_ratios=massive_ratios,
            notes=plan.notes + built.notes + (prompt_note if options.prompt == "" else ()),
        ),
        geometry=io.geometry,
        preprocess=Preprocess(long_side=plan.image_size),
        inputs=tuple(t.spec() for t in io.inputs),
        outputs=tuple(t.spec() for t in io.outputs),
        files={},
        source_weights={str(p.relative_to(source.path)): sha256_file(p)
                        for p in [*built.load.files, *vae_weight_files(source)]},
        parity=parity.to_dict(),
        tools=tool_versions(),
        tensorrt_profiles=trt_profiles(io, plan.image_size, plan.ensemble, covers=reference_sizes(io, folder)),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        defaults={"model": source.spec.name if source.spec is not None else None, "rule": source.defaults_rule},
        random_weights=source.random_weights,
        trained_on=source.trained_on,
        workload=built.workload,
    )
    graph_checks.finalize(folder / MODEL_FILE, draft)  # changes model.onnx: hash it afterwards
    manifest = replace(draft, files={name: file_record(folder / name)
                                     for name in (MODEL_FILE, MODEL_DATA_FILE, REFERENCE_FILE)}).sealed()
    manifest.save(folder)
    # The files were hashed just now: stamp them, so the first load does not hash them again. The stamp's
    # keys (inode, mtime, ctime) survive the rename of the staging folder into place.
    stamp_export(folder, manifest)
    return manifest


def reference_sizes(io: GraphIO, folder: Path) -> Sizes | None:
    """The sizes of reference.safetensors' inputs (None where the folder has none)."""
    from safetensors.numpy import load_file

    path = folder / REFERENCE_FILE
    return io.sizes_of(load_file(str(path))) if path.is_file() else None


def trt_profiles(io: GraphIO, image_size: int, ensemble: int, covers: Sizes | None = None) -> dict[str, Any]:
    """min/opt/max shapes for a TensorRT optimization profile, from the graph's one shape function.

    covers: sizes the profile must hold besides its defaults (the reference's inputs): min and max are
    widened on every axis to include them."""
    m = io.size_multiple
    # within the position tables' limit; the export's own size always fits (the plan checked it)
    top = max(PROFILE_SIDES[1], image_size)
    top = top if io.geometry.max_size is None else min(top, io.geometry.max_size)
    high = top // m * m
    low = min(-(-PROFILE_SIDES[0] // m) * m, image_size, high)
    video = io.has_axis(FRAMES)
    few, most = (io.clip_frames(MIN_FRAMES), io.max_frames) if video else (None, None)
    smallest = Sizes(batch=1, ensemble=1, height=low, width=low, frames=few)
    largest = Sizes(batch=PROFILE_MAX_BATCH[video], ensemble=max(ensemble, PROFILE_MAX_ENSEMBLE), height=high,
                    width=high, frames=most)
    if covers is not None:
        smallest, largest = _widened(smallest, covers, min), _widened(largest, covers, max)
    return io.profiles(smallest, Sizes(batch=1, ensemble=ensemble, height=image_size, width=image_size, frames=most),
                       largest)


def _widened(bound: Sizes, covers: Sizes, pick) -> Sizes:
    """`bound` moved (pick = min or max) on every axis both give, to hold `covers`."""
    return Sizes(**{f.name: getattr(bound, f.name) if getattr(covers, f.name) is None or getattr(bound, f.name) is None
                    else pick(getattr(bound, f.name), getattr(covers, f.name)) for f in fields(Sizes)})


def tool_versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import torch

    import ditf_runtime

    from . import __version__

    import transformers

    return {"ditf_export": __version__, "ditf_runtime": ditf_runtime.__version__,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
