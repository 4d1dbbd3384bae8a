"""Step 3 of an export: torch.onnx.export (dynamo, opset 20) with every dynamic axis the graph declares.

Example inputs and dynamic axes both come from the graph's GraphIO (ditf_calib.graph_io): each named
axis becomes one torch.export Dim, and "height/8" is (size_multiple / 8) times the height Dim, so the
exporter can prove every stride relation instead of specialising sizes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from pathlib import Path

import torch

from ditf_calib.graph_io import BATCH, ENSEMBLE, FRAMES, IMAGE, NOISE, SPATIAL, Axis, GraphIO, Sizes

OPSET = 20
# Example sizes for tracing: B, E >= 2 and a non-square image, else torch.export specialises them.
TRACE_BATCH, TRACE_ENSEMBLE = 2, 2
TRACE_GRID = (4, 6)  # example token grid (rows, cols): 64x96 pixels at stride 16
TRACE_FRAMES = 3  # video: frames in the example (>= 2, and unlike B and E)
# Ranges of the dynamic axes; height and width in units of the size multiple (1024 -> 16384 px at 16).
DYNAMIC_RANGES = {BATCH: (1, 1024), ENSEMBLE: (1, 256), "height": (1, 1024), "width": (1, 1024)}
MIN_FRAMES = 2


# Causal 3-D VAEs (geometry.frame_stride s > 1): clips of 1 + s*k frames, k temporal groups in the example (>= 2
# and unlike B and E, so neither k nor the 1 + k latent frames is specialised)
TRACE_FRAME_GROUPS = 3


def trace_sizes(io: GraphIO) -> Sizes:
    m = io.size_multiple
    frames = min(TRACE_FRAMES, io.max_frames) if io.has_axis(FRAMES) else None
    s = io.geometry.frame_stride
    if frames is not None and s > 1:
        frames = 1 + s * min(TRACE_FRAME_GROUPS, (io.max_frames - 1) // s)
    return Sizes(batch=TRACE_BATCH, ensemble=TRACE_ENSEMBLE, height=TRACE_GRID[0] * m, width=TRACE_GRID[1] * m,
                 frames=frames)


def dynamic_shapes(io: GraphIO) -> dict[str, dict[int, object]]:
    """torch.export dynamic_shapes for every input: one Dim per axis name; spatial axes as multiples of
    a Dim counting size-multiple cells (image H = 16 * height_16, noise H/8 = 2 * height_16)."""
    from torch.export import Dim

    m = io.size_multiple
    dims = {name: Dim(name, min=lo, max=hi) for name, (lo, hi) in DYNAMIC_RANGES.items() if name not in SPATIAL}
    dims.update({side: Dim(f"{side}_{m}", min=DYNAMIC_RANGES[side][0], max=DYNAMIC_RANGES[side][1])
                 for side in SPATIAL})
    s = io.geometry.frame_stride
    if io.has_axis(FRAMES) and s == 1:
        dims[FRAMES] = Dim(FRAMES, min=MIN_FRAMES, max=io.max_frames)
    elif io.has_axis(FRAMES):  # frames = 1 + s * groups, latent frames = 1 + groups: both derived from one Dim
        groups = Dim("frame_groups", min=1, max=(io.max_frames - 1) // s)

    def expr(axis: Axis):
        if axis.name == FRAMES and s > 1:
            return groups + 1 if axis.causal else s * groups + 1
        cells = m // axis.stride if axis.name in SPATIAL else 1
        return dims[axis.name] if cells == 1 else cells * dims[axis.name]

    return {t.name: {i: expr(a) for i, a in enumerate(t.axes) if isinstance(a, Axis)} for t in io.inputs}


def example_inputs(io: GraphIO) -> tuple[torch.Tensor, ...]:
    """Random example tensors at trace_sizes, in input order (their values do not shape the graph)."""
    shapes = io.shapes(trace_sizes(io))
    made = []
    for t in io.inputs:
        if t.role == IMAGE:
            made.append(torch.rand(shapes[t.name]) * 2 - 1)
        elif t.role == NOISE:
            made.append(torch.randn(shapes[t.name]))
        else:
            raise ValueError(f"input {t.name}: no example rule for {t.role!r} inputs")
    return tuple(made)


# Warnings torch's exporter prints on every export that say nothing about this graph; any other warning is
# shown. (message regex, category)
HARMLESS_WARNINGS = (
    # torch 2.13's own pytree code calling its deprecated LeafSpec check
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # one axis name (batch, frames, ...) declared on several inputs: the exporter keeps one symbol, as intended
    (r"# The axis name: \w+ will not be used, since it shares the same shape constraints with another axis",
     UserWarning),
)


@contextlib.contextmanager
def harmless_warnings_hidden():
    with warnings.catch_warnings():
        for message, category in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


TORCH_TRACE_LOG = "torch.__trace"


@contextlib.contextmanager
def torch_trace_kept_to_torch():
    """torch's structured trace (logger "torch.__trace": always DEBUG, never propagating) goes only where torch
    sends it (files, when TORCH_TRACE is set). Handlers others attached to that logger are detached meanwhile:
    pytest attaches its capture handlers to every non-propagating logger, so a failing test that exported
    printed ~175 empty "DEBUG torch.__trace" lines."""
    log = logging.getLogger(TORCH_TRACE_LOG)
    foreign = [h for h in log.handlers if not type(h).__module__.startswith("torch.")]
    for handler in foreign:
        log.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            log.addHandler(handler)


def export_onnx(graph: torch.nn.Module, path: Path, io: GraphIO) -> None:
    """Trace `graph` to `path` (+ `path`.data, external weights)."""
    with torch.no_grad(), harmless_warnings_hidden(), torch_trace_kept_to_torch():
        program = torch.onnx.export(
            graph, example_inputs(io), dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic_shapes(io),
            input_names=list(io.input_names), output_names=list(io.output_names), external_data=True,
            verbose=False,
        )
    program.save(str(path), external_data=True)
    del program
    forget_rewriter_state()


def forget_rewriter_state() -> int:
    """Drop what onnxscript's rewrite rules remember of the last graph they matched.

    The rules torch.onnx.export's optimizer applies are module-level objects, and their matchers keep the
    last graph, node and match they looked at (onnxscript 0.7: `_graph`, `_current_node`, `_match`,
    `_tracer`). That graph holds every initializer as a view of a PyTorch parameter, so after an export
    the module's weights could never be freed (measured: 0.7x the kept weights held through every
    onnxruntime session of an export). The matchers set these afresh at each match, so clearing them
    changes nothing else. Returns how many matchers were cleared.
    """
    try:
        from onnxscript.rewriter._matcher import PatternMatcher
    except ImportError:  # another onnxscript layout: nothing known to clear
        return 0
    cleared = 0
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance reads obj.__class__, and on torch.distributed.reduce_op that
        # read prints a FutureWarning ("`torch.distributed.reduce_op` is deprecated") on every export
        if issubclass(type(obj), PatternMatcher):
            for attr in ("_graph", "_current_node", "_match", "_tracer"):
                if getattr(obj, attr, None) is not None:
                    setattr(obj, attr, None)
            cleared += 1
    return cleared
