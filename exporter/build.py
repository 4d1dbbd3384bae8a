"""Step 2 of an export: the PyTorch feature graph, both the export source and the parity reference.

Only what layer K needs is loaded (loading.py); the adapter bakes the conditioning and hands over the
backbone and block K's modulation; `--discard auto` then finds the massive channels with this very graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ditf_calib.graph_io import FRAMES, GraphIO
from ditf_runtime.manifest import Workload

from .errors import ExportInputError
from .feature_graph import FeatureGraph, LatentEncoder
from .loading import LoadReport, load_truncated_transformer, load_vae, read_vae_config
from .plan import ExportPlan


@dataclass(frozen=True)
class BuiltGraph:
    graph: FeatureGraph | None  # None once exported and freed (without_module)
    load: LoadReport  # what was read from the transformer's shards
    notes: tuple[str, ...] = ()  # what the adapter and the graph baked or chose, for the manifest
    workload: Workload | None = None  # what the runtime's memory estimate needs (manifest.workload)

    def without_module(self) -> "BuiltGraph":
        """The same record without the PyTorch module, so its weights can be freed."""
        return replace(self, graph=None)


def build_graph(plan: ExportPlan, dtype: torch.dtype = torch.float32) -> BuiltGraph:
    """The PyTorch module that is both the export source and the parity reference."""
    source, adapter, options = plan.source, plan.adapter, plan.options
    own = adapter.build_own_graph(source, options, dtype)
    if own is not None:  # a family whose graph is not the DiTF diffusion graph (it declared its own GraphIO)
        report = LoadReport(tensors_read=own.tensors_read, tensors_in_checkpoint=own.tensors_in_checkpoint,
                            bytes_read=own.bytes_read, shards_opened=len(own.files), files=own.files)
        return BuiltGraph(own.graph, report, own.notes, adapter.workload(source.transformer_config, None, {}))
    config = source.transformer_config
    transformer, report = load_truncated_transformer(source, adapter, options.layer, dtype)
    conditioning = adapter.conditioning(source, config, options)
    parts = adapter.feature_parts(transformer, conditioning, options)
    a, b = adapter.noise_coefficients(source, options)
    encoder = adapter.latent_encoder(source) or LatentEncoder(load_vae(source))
    graph = FeatureGraph(encoder, parts, a, b, options.discard,
                         patch_size=adapter.patch_size(config), video=plan.io.has_axis(FRAMES),
                         head=options.head).eval()
    _check_against_io(graph, plan.io)
    workload = adapter.workload(config, read_vae_config(source), conditioning)
    return BuiltGraph(graph, report, parts.notes + FeatureGraph.NOTES, workload)


def _check_against_io(graph: FeatureGraph, io: GraphIO) -> None:
    """The shapes declared from the configs (plan.io) are the ones the loaded modules compute."""
    geometry = io.geometry
    got = (graph.encoder.latent_channels, int(graph.head.keep.shape[0]))
    want = (geometry.latent_channels, geometry.feature_channels)
    if got != want:
        raise RuntimeError(f"the loaded VAE and transformer give (latent, feature) channels {got}, but their "
                           f"configs declare {want}")


def detect_discard(plan: ExportPlan, built: BuiltGraph,
                   say: Callable[[str], None]) -> tuple[ExportPlan, dict[str, float]]:
    """--discard auto: find the massive channels with this very graph over plan.calib_images and discard them.

    Returns the derived plan and the ratios for the manifest (Feature.massive_channel_ratios).
    """
    from ditf_calib.data import CalibrationError
    from ditf_calib.massive import detect_for_graph

    say(f"detecting massive channels over {plan.calib_images} (ratio > {plan.massive_threshold:g})")
    try:
        found = detect_for_graph(built.graph, plan.io, plan.calib_images, long_side=plan.image_size,
                                 ensemble=plan.ensemble, threshold=plan.massive_threshold)
    except CalibrationError as exc:
        raise ExportInputError(str(exc)) from None
    for line in found.table(8).splitlines():
        say("  " + line)
    built.graph.head.set_discard(found.channels)
    note = (f"discard: detected over {len(found.image_names)} calibration images, channels whose "
            f"median |h_K| is > {found.threshold:g}x the median channel")
    return plan.with_discard(found.channels, note), found.manifest_ratios()
