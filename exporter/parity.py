"""Step 5 of an export: the exported graph on onnxruntime vs the PyTorch reference, same inputs.

Two halves, so the PyTorch module never shares memory with an onnxruntime session: `reference_cases`
runs the module on every parity input before it is freed (the outputs are kept, not the module), and
`run_parity` later runs the graph on disk on the very same inputs and compares.

Metrics live in ditf_runtime.parity (numpy only) so a TensorRT runner without torch judges the same way.
Inputs come from the graph's GraphIO (random ones at each parity size, plus labelled extra feeds such as
real calibration images); the first case's inputs and reference outputs are saved (reference.safetensors)
for later checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ditf_calib.graph_io import BATCH, ENSEMBLE, FRAMES, GraphIO, Sizes
from ditf_runtime.backends.onnxrt import create_session
from ditf_runtime.parity import TOLERANCES, compare
from ditf_runtime.precision import Precision

BACKEND = "onnxruntime CPUExecutionProvider"
REFERENCE = "PyTorch float32 eager (the same module that was exported)"
PARITY_BATCH, PARITY_ENSEMBLE = 2, 3
# Runs see at most this many images at once (a batch of calibration images is split): activations grow
# with the batch, weights do not, and on a large model the two should not add up. Still > 1, so every
# run crosses the batch axis.
RUN_BATCH = 2


@dataclass(frozen=True)
class ParityReport:
    """The manifest's parity section, built once; `to_dict()` is what manifest.json holds."""

    backend: str
    tolerance: Mapping[str, float]
    results: tuple[Mapping[str, Any], ...]
    summary: tuple[str, ...]
    precision: Mapping[str, Any] = field(default_factory=dict)  # what the precision step did
    reference: str = REFERENCE

    @property
    def passed(self) -> bool:
        return all(r["passed"] for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "reference": self.reference, "tolerance": dict(self.tolerance),
                "results": [dict(r) for r in self.results], "passed": self.passed, "summary": list(self.summary),
                "precision": dict(self.precision)}


@dataclass(frozen=True)
class ParityCase:
    """One parity input and what the PyTorch module computed on it."""

    label: str | None  # None: random inputs; else what the inputs are (e.g. "5 calibration images at 256x256")
    feed: Mapping[str, np.ndarray]
    reference: np.ndarray


@torch.no_grad()
def torch_features(graph: torch.nn.Module, feed: Mapping[str, np.ndarray], io: GraphIO) -> np.ndarray:
    def run(part: Mapping[str, np.ndarray]) -> np.ndarray:
        out = graph(*(torch.from_numpy(part[name]) for name in io.input_names))
        # the graph's output is a transposed view; safetensors writes raw buffers, so make it C-contiguous
        return np.ascontiguousarray(out.float().numpy())

    return in_batches(run, feed, io)


def in_batches(run: Callable[[Mapping[str, np.ndarray]], np.ndarray], feed: Mapping[str, np.ndarray],
               io: GraphIO, size: int = RUN_BATCH) -> np.ndarray:
    """`run(feed)` on slices of at most `size` batch elements, outputs joined: the same numbers (every
    batch element is computed on its own), with a fraction of the activations at once."""
    inputs = {t.name: t.axis_index(BATCH) for t in io.inputs}
    axis = io.outputs[0].axis_index(BATCH)
    if axis is None or None in inputs.values():
        return run(feed)
    n = np.shape(feed[io.inputs[0].name])[inputs[io.inputs[0].name]]
    if n <= size:
        return run(feed)
    parts = []
    for start in range(0, n, size):
        part = {name: np.take(feed[name], np.arange(start, min(start + size, n)), axis=inputs[name]) for name in feed}
        parts.append(run(part))
    return np.ascontiguousarray(np.concatenate(parts, axis=axis))


def _maps(features: np.ndarray) -> np.ndarray:
    """[B, F, C, h, w] video features -> [B*F, C, h, w] frame maps, the layout the metrics take."""
    return features.reshape(-1, *features.shape[-3:]) if features.ndim == 5 else features


def parity_inputs(io: GraphIO, sizes: tuple[tuple[int, int], ...], seed: int, batch: int = PARITY_BATCH,
                  ensemble: int = PARITY_ENSEMBLE, frames: int | None = None) -> list[dict[str, np.ndarray]]:
    """Random inputs at each (H, W), seeds seed, seed + 1, ...; graphs with frames get `frames` (default:
    their most)."""
    if io.has_axis(FRAMES):
        frames = frames or io.max_frames
    return [io.random_inputs(Sizes(batch=batch, ensemble=ensemble, height=h, width=w, frames=frames), seed + i)
            for i, (h, w) in enumerate(sizes)]


def reference_cases(graph: torch.nn.Module, io: GraphIO, sizes: tuple[tuple[int, int], ...],
                    extra_feeds: tuple[tuple[str, Mapping[str, np.ndarray]], ...] = (),
                    say: Callable[[str], None] = lambda line: None) -> tuple[ParityCase, ...]:
    """The PyTorch module's outputs on random inputs at each size, then on `extra_feeds` (label, feed).

    say: gets a line as each case is done (minutes each on a large model)."""
    cases = []
    for label, feed in [(None, feed) for feed in parity_inputs(io, sizes, seed=1000)] + list(extra_feeds):
        cases.append(ParityCase(label, dict(feed), torch_features(graph, feed, io)))
        sizes_done = io.sizes_of(feed)
        say(f"{sizes_done.height}x{sizes_done.width} B={sizes_done.batch}{' (' + label + ')' if label else ''}: done")
    return tuple(cases)


def save_reference(case: ParityCase, io: GraphIO, path: Path) -> None:
    """reference.safetensors: one case's inputs and PyTorch output, for the runtime's verify_reference."""
    from safetensors.numpy import save_file

    tensors = {**case.feed, io.output_names[0]: case.reference}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))


def run_parity(cases: tuple[ParityCase, ...], onnx_path: Path, io: GraphIO, precision: Precision,
               backend: str | None = None, precision_report: Mapping[str, Any] | None = None,
               say: Callable[[str], None] = lambda line: None) -> ParityReport:
    """Run `onnx_path` on every case's inputs (one onnxruntime session) and compare with its reference.

    backend: what runs onnx_path, when it is not the written graph itself (an emulated twin).
    say: gets each case's summary line as soon as it is judged (cases take minutes on large models).
    """
    session = create_session(onnx_path)
    results, summary = [], []
    for case in cases:
        got = in_batches(lambda part: session.run(list(io.output_names), dict(part))[0], case.feed, io)
        res = compare(_maps(got), _maps(case.reference), precision)
        row, line = _row(io.sizes_of(case.feed), res, case.label)
        results.append(row)
        summary.append(line)
        say(line)
    del session
    tol = TOLERANCES[precision]
    return ParityReport(
        backend=backend or BACKEND, results=tuple(results), summary=tuple(summary),
        tolerance={"min_cosine": tol.min_cosine, "max_rel_error": tol.max_rel_error,
                   "min_nn_agreement": tol.min_nn_agreement},
        precision=dict(precision_report or {}),
    )


def _row(sizes: Sizes, res, label: str | None) -> tuple[dict[str, Any], str]:
    """One result row of the manifest and its summary line."""
    row: dict[str, Any] = {"height": sizes.height, "width": sizes.width, "batch": sizes.batch}
    line = f"{sizes.height}x{sizes.width} B={sizes.batch}"
    if sizes.ensemble is not None:
        row[ENSEMBLE] = sizes.ensemble
        line += f" E={sizes.ensemble}"
    row.update(res.to_dict())
    if sizes.frames is not None:
        row[FRAMES] = sizes.frames
    if label:
        row["inputs"] = label
    line += f"{' (' + label + ')' if label else ''}: {res}"
    return row, line
