"""Step 5 of an export: the exported graph on onnxruntime vs the PyTorch reference, same inputs.

Two halves, so the PyTorch module never shares memory with an onnxruntime session: `reference_cases`
runs the module on every parity input before it is freed (the outputs are kept, not the module), and
`run_parity` later runs the graph on disk on the very same inputs and compares.

Metrics live in ditf_runtime.parity (numpy only) so a TensorRT runner without torch judges the same way.
Inputs come from the graph's GraphIO (random ones at each parity size, plus labelled real-image inputs:
the calibration images, or for INT8 held-out images one by one at their own sizes); the first gating
case's inputs and reference outputs are saved (reference.safetensors) for later checks.

Each case either gates (its failure fails the export) or is reported beside the gate. At INT8 only
held-out real images gate: random pixels look like nothing the calibration saw, and judging INT8 on
them decides by noise rather than by what users feed. The report names what decided (`decided_by`),
and a gate with no decisive evidence (no gating case; at INT8, zero decisive matching points) fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ditf_calib.graph_io import BATCH, ENSEMBLE, FRAMES, GraphIO, Sizes
from ditf_runtime.backends.onnxrt import create_session
from ditf_runtime.cpu_info import this_cpu
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
    decided_by: Mapping[str, Any] = field(default_factory=dict)  # the gating rows: which inputs, which sizes
    evidence_missing: str | None = None  # why the gate had nothing decisive to judge (then it fails)
    machine: Mapping[str, Any] = field(default_factory=dict)  # where the gate ran: CPU class, integer kernels

    @property
    def passed(self) -> bool:
        return self.evidence_missing is None and all(r["passed"] for r in self.results if r.get("gates", True))

    def to_dict(self) -> dict[str, Any]:
        d = {"backend": self.backend, "reference": self.reference, "tolerance": dict(self.tolerance),
             "results": [dict(r) for r in self.results], "passed": self.passed, "summary": list(self.summary),
             "precision": dict(self.precision), "decided_by": dict(self.decided_by)}
        if self.machine:
            d["machine"] = dict(self.machine)
        if self.evidence_missing:
            d["evidence_missing"] = self.evidence_missing
        return d


@dataclass(frozen=True)
class ParityInput:
    """Labelled real-image parity inputs: one feed (a batch), or several (one image each, own sizes),
    compared as one set of maps."""

    label: str
    feeds: tuple[Mapping[str, np.ndarray], ...]
    gates: bool = True
    record: Mapping[str, Any] = field(default_factory=dict)  # for the manifest: images, sizes, ...


@dataclass(frozen=True)
class ParityCase:
    """One parity input (one feed, or several compared as one set) and what the PyTorch module computed."""

    label: str | None  # None: random inputs; else what the inputs are (e.g. "2 held-out real images ...")
    feeds: tuple[Mapping[str, np.ndarray], ...]
    references: tuple[np.ndarray, ...]
    gates: bool = True
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def feed(self) -> Mapping[str, np.ndarray]:
        return self.feeds[0]

    @property
    def reference(self) -> np.ndarray:
        return self.references[0]


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
    their most, at most graph_io.CHECK_FRAMES)."""
    if io.has_axis(FRAMES):
        frames = frames or io.check_frames()
    return [io.random_inputs(Sizes(batch=batch, ensemble=ensemble, height=h, width=w, frames=frames), seed + i)
            for i, (h, w) in enumerate(sizes)]


def reference_cases(graph: torch.nn.Module, io: GraphIO, sizes: tuple[tuple[int, int], ...],
                    extra: tuple[ParityInput, ...] = (), random_gates: bool = True,
                    say: Callable[[str], None] = lambda line: None) -> tuple[ParityCase, ...]:
    """The PyTorch module's outputs on random inputs at each size (gating or not: `random_gates`), then on
    the labelled real-image inputs `extra`.

    say: gets a line as each case is done (minutes each on a large model)."""
    cases = []
    for feed in parity_inputs(io, sizes, seed=1000):
        cases.append(ParityCase(None, (dict(feed),), (torch_features(graph, feed, io),), random_gates))
        done = io.sizes_of(feed)
        say(f"{done.height}x{done.width} B={done.batch}: done")
    for item in extra:
        refs = []
        for feed in item.feeds:
            refs.append(torch_features(graph, feed, io))
            if len(item.feeds) > 1:
                done = io.sizes_of(feed)
                say(f"{done.height}x{done.width} ({item.label}, {len(refs)}/{len(item.feeds)}): done")
        cases.append(ParityCase(item.label, tuple(dict(f) for f in item.feeds), tuple(refs), item.gates, item.record))
        if len(item.feeds) == 1:
            done = io.sizes_of(item.feeds[0])
            say(f"{done.height}x{done.width} B={done.batch} ({item.label}): done")
    return tuple(cases)


def save_reference(case: ParityCase, io: GraphIO, path: Path, max_batch: int | None = None) -> None:
    """reference.safetensors: one case's inputs and PyTorch output, for the runtime's verify_reference.

    max_batch: keep only the case's first batch elements (each is computed on its own, so they are the
    same numbers): a video export's TensorRT profile takes one clip at a time."""
    from safetensors.numpy import save_file

    tensors = {**case.feed, io.output_names[0]: case.reference}
    batch_axes = {t.name: t.axis_index(BATCH) for t in io.inputs + io.outputs}
    if max_batch is not None and None not in batch_axes.values():
        tensors = {k: np.take(v, np.arange(min(max_batch, np.shape(v)[batch_axes[k]])), axis=batch_axes[k])
                   for k, v in tensors.items()}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))


def run_parity(cases: tuple[ParityCase, ...], onnx_path: Path, io: GraphIO, precision: Precision,
               backend: str | None = None, precision_report: Mapping[str, Any] | None = None,
               say: Callable[[str], None] = lambda line: None,
               disabled_optimizers: tuple[str, ...] = (),
               judges: Mapping[str, Callable[..., str]] | None = None) -> ParityReport:
    """Run `onnx_path` on every case's inputs (one onnxruntime session) and compare with its reference.

    backend: what runs onnx_path, when it is not the written graph itself (an emulated twin).
    say: gets each case's summary line as soon as it is judged (cases take minutes on large models).
    disabled_optimizers: onnxruntime graph transformers the session skips (an emulated twin's: its precision step's).
    judges: record key -> judge(row, setting, graph maps, reference maps) -> summary text, for cases whose record
    holds that key (semantic_gate.judge under "semantic"); a judge may fail the row.
    """
    judges = dict(judges or {})
    session = create_session(onnx_path, disabled_optimizers=disabled_optimizers)
    results, summary = [], []
    for case in cases:
        got = [in_batches(lambda part: session.run(list(io.output_names), dict(part))[0], feed, io)
               for feed in case.feeds]
        if len(got) == 1:
            res = compare(_maps(got[0]), _maps(case.reference), precision)
        else:  # one image per feed, each at its own size: compared as one list of maps
            res = compare([m for g in got for m in _maps(g)], [m for r in case.references for m in _maps(r)],
                          precision)
        row, line = _row(case, io, res)
        for key, judge in judges.items():  # e.g. a trained model's held-out pairs: ground-truth PCK gates too
            if case.record.get(key):
                line += judge(row, case.record[key], _maps(got[0]), _maps(case.reference))
        results.append(row)
        summary.append(line)
        say(line)
    del session
    tol = TOLERANCES[precision]
    decided_by, missing = _decision(cases, results, needs_matches=Precision(precision).is_calibrated)
    if missing:
        summary.append(f"no decisive evidence: {missing}")
    return ParityReport(
        backend=backend or BACKEND, results=tuple(results), summary=tuple(summary),
        tolerance={"min_cosine": tol.min_cosine, "max_rel_error": tol.max_rel_error,
                   "min_nn_agreement": tol.min_nn_agreement,
                   **({"min_pck_agreement": tol.min_pck_agreement} if tol.min_pck_agreement is not None else {})},
        precision=dict(precision_report or {}), decided_by=decided_by, evidence_missing=missing,
        machine=gate_machine(),
    )


def gate_machine() -> dict[str, str]:
    """Which class of CPU the gate ran on (its integer kernels differ: ditf_runtime.cpu_info)."""
    import onnxruntime

    cpu = this_cpu()
    return {"cpu_class": cpu.name, "cpu_model": cpu.model, "int8_kernels": cpu.int8_kernels,
            "onnxruntime": onnxruntime.__version__}


def _decision(cases: tuple[ParityCase, ...], results: list[dict[str, Any]],
              needs_matches: bool = True) -> tuple[dict[str, Any], str | None]:
    """Which rows decided the gate (for the manifest), and why there was nothing decisive, if so.

    needs_matches (INT8, FP8): the gate rests on matching (NN and PCK agreement); gating rows with neither a
    decisive nearest-neighbour point nor a decisive keypoint transfer (ditf_runtime.parity counts only those)
    are no evidence: near-constant features agree with anything. Elsewhere cosine and relative error decide
    on their own."""
    gating = [(c, r) for c, r in zip(cases, results) if c.gates]
    decided = {"rows": [i for i, c in enumerate(cases) if c.gates],
               "inputs": [c.label or "random inputs" for c, _ in gating],
               "sizes": sorted({(r["height"], r["width"]) for c, r in gating} |
                               {tuple(s) for c, _ in gating for s in c.record.get("sizes", ())}),
               "reported_not_gated": [c.label or f"random inputs {r['height']}x{r['width']}"
                                      for c, r in zip(cases, results) if not c.gates]}
    decided["sizes"] = [list(s) for s in decided["sizes"]]
    for c, _ in gating:
        decided.update({k: v for k, v in c.record.items() if k != "sizes"})
    if not gating:
        return decided, "no parity input decides the gate"
    if needs_matches and not any(r["nn_points"] or r.get("pck_points") for _, r in gating):
        return decided, ("the gating inputs gave no nearest-neighbour match with a clear margin and no decisive "
                         "keypoint transfer (their features are too uniform for matching to tell a right answer "
                         f"from a wrong one: {', '.join(c.label or 'random inputs' for c, _ in gating)})")
    return decided, None


def _row(case: ParityCase, io: GraphIO, res) -> tuple[dict[str, Any], str]:
    """One result row of the manifest and its summary line."""
    sizes: Sizes = io.sizes_of(case.feed)
    row: dict[str, Any] = {"height": sizes.height, "width": sizes.width, "batch": sizes.batch}
    if len(case.feeds) > 1:
        row["batch"] = len(case.feeds)
        row["sizes"] = [[io.sizes_of(f).height, io.sizes_of(f).width] for f in case.feeds]
        line = f"{len(case.feeds)} images ({', '.join(f'{h}x{w}' for h, w in row['sizes'])})"
    else:
        line = f"{sizes.height}x{sizes.width} B={sizes.batch}"
    if sizes.ensemble is not None:
        row[ENSEMBLE] = sizes.ensemble
        line += f" E={sizes.ensemble}"
    row.update(res.to_dict())
    if sizes.frames is not None:
        row[FRAMES] = sizes.frames
    if case.label:
        row["inputs"] = case.label
    row["gates"] = case.gates  # False: reported beside the gate; its "passed" does not decide the export
    status = "" if case.gates else " [reported, not gated]"
    line += f"{' (' + case.label + ')' if case.label else ''}: {res}{status}"
    return row, line
