"""How much memory a run will take, estimated from the manifest before it runs; refusing what does not fit.

Dense attention makes memory grow with the fourth power of the image side: a 2048-pixel run of even
the tiny built-in model needs ~34 GB by this estimate. The CPU variant (`ditf optimize-cpu`, cpu_variant.py)
fuses attention into onnxruntime's flash kernel, which never stores the scores: its memory grows with the
pixels, and the same run needs ~1.5 GB. Every way into the graph (extract, match, track, show, eval-spair,
the server's requests, Ray workers) goes through `Extractor.run`, which calls `check` with the exact input
shape, and whether its graph fuses attention (`RunShape.fused_attention`, from `Extractor.graph`), before it
starts the backend; batch commands also check their largest possible input up front (`check_long_side`),
before they write anything.

The formula (`estimate`; docs/DESIGN.md, "Memory") for a run of B images (or clips of F frames),
E noise draws (1 for a graph without noise: DINOv2), H x W pixels, with n = (H/vae_stride)(W/vae_stride)
latent cells, t = the image tokens per frame plus the extra tokens attended with them (DINOv2's class
and register tokens), L = the prompt tokens and s = bytes per activation (4; 2 in fp16/bf16 attention on a
GPU; on the CPU onnxruntime computes those in fp32 and widens their weights to fp32, w = 2.5, else w = 1):

    weights      = model.onnx + model.onnx.data bytes   x WEIGHT_COPIES x w   +  SESSION_OVERHEAD
    VAE          = B F (VAE_CONV_COPIES x c0 H W x 4  +  VAE attention)          (0 without a VAE)
    attention    = B E F heads x N_q N_k x s                       x ATTENTION_COPIES
                   (joint prompt: N_q = N_k = t + L; cross: t^2 + t L; video adds the temporal t F^2)
    MLP / stream = B E F (t + L) x ffn_dim x 4                     x STREAM_COPIES
    total        = weights + VAE + attention + MLP + RUNTIME_OVERHEAD

    VAE attention, dense = VAE_ATTENTION_COPIES x n^2 x 4               (one head over the latent cells)

Fused attention (the CPU variant) replaces both attention terms by the kernel's own memory,
cpu_variant.attention_bytes(fused=True), the one place that knows it (linear in the tokens), and its
graph holds more copies of the VAE's full-resolution activations (FUSED_VAE_CONV_COPIES, measured):

    VAE attention, fused = FUSED_ATTENTION_COPIES x attention_bytes(1, 1, n, n, c_mid)
    attention, fused     = FUSED_ATTENTION_COPIES x B E F x attention_bytes(1, heads, t + L, t + L, head_dim)
                           (cross: (t, t) + (t, L); video adds B E t x attention_bytes(1, heads, F, F, head_dim))

Two fused exports (fusion.py) run at once, on two threads: a fused run's estimate is the sum of both
models' (`check_runs`), weights included, and a refusal suggests one --size for both. A refusal of a
dense graph on the CPU that the CPU variant would fit says so.

c0 and c_mid are the VAE's first and last block widths. The copies are calibrated against measured peak
RSS of onnxruntime on the CPU (bench/bench_memory.py prints predicted against measured, for model.onnx,
the CPU variant and each precision); the sum (rather than the larger of the VAE and transformer terms) keeps
the estimate an upper bound, since onnxruntime's arena does not always reuse the VAE's memory for the blocks.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence, Union

from .cpu_variant import attention_bytes
from .errors import InputError
from .host_memory import available_memory
from .manifest import MODEL_DATA_FILE, MODEL_FILE, NOISE_INPUT, Manifest, Workload, latent_frames
from .preprocess import check_size_limit, model_size

GIB = 1 << 30
MIB = 1 << 20

# Live tensors of each kind at the peak, calibrated on onnxruntime's CPU provider (bench/bench_memory.py, peak after a
# session's second run; docs/runtime-memory.md has the table): the whole run predicted 1.1-1.2x the measured peak
# for model.onnx on a model with FLUX's VAE widths at fp32, fp16 and int8; every row of flux-tiny (model.onnx and
# the CPU variant) and of the CPU variant on FLUX's VAE widths at or above it, never below.
ATTENTION_COPIES = 2.25  # [heads, N, N]: scores, softmax, part of the next
VAE_ATTENTION_COPIES = 2.0  # the VAE mid-block's one-head [n, n] attention
# [c0, H, W] activations of the VAE's full-resolution blocks. model.onnx: the whole measured peak on FLUX's VAE widths
# is 5.4-6.5 of them at 256-768 px, VAE attention and blocks included (4 + the other terms covers it). The CPU
# variant's graph holds more at once: 5.5-6.3 of them before anything else (its peak; 6.8 at 1536 px).
VAE_CONV_COPIES = 4.0
FUSED_VAE_CONV_COPIES = 6.0
STREAM_COPIES = 1.0  # [N, ffn_dim]: the MLP's hidden activations (FLUX's single blocks keep them through attention)
FUSED_ATTENTION_COPIES = 2.0  # x cpu_variant.attention_bytes(fused=True): conservative (under the VAE's peak)
# Resident bytes per weight byte: a session holds about the stored size (measured 0.96-1.0x at fp32 and int8 on top
# of the session's own SESSION_OVERHEAD: no second, pre-packed copy stays beside them).
WEIGHT_COPIES = 1.1
SESSION_OVERHEAD = 48 * MIB  # a session's code, kernels' tables and graph, whatever the weights (40-45 MiB measured)
# onnxruntime's CPU provider has no fp16/bf16 GEMM: when a session is made it converts every fp16 weight such an op
# reads to an fp32 initializer (its cast-insertion pass, whatever the optimisation settings; skipping ConstantFolding
# changes nothing: bench/bench_memory.py --precisions), keeps part of the fp16 originals (measured: fp16 holds 374-381
# MiB against fp32's 306-320 for 140 MiB stored, i.e. the fp32 copies plus about half the stored bytes), and
# computes in fp32. So on the CPU a low-precision export weighs 2.5 times its stored bytes, and its attention
# scores are 4 bytes.
CPU_WIDENING = {"fp16": 2.5, "bf16": 2.5}
RUNTIME_OVERHEAD = 32 * MIB  # thread pools, arenas' slack, small tensors

# Manifests written before the workload section: values no smaller than any registered real model's,
# so the estimate stays an upper bound (head size 64 or more; FLUX's VAE widths; FLUX.1-dev's prompt).
FALLBACK_WORKLOAD_NOTE = "the manifest predates ditf's memory fields; re-export for an exact estimate"
FALLBACK_HEAD_DIM = 64
FALLBACK_TEXT_TOKENS = 512
FALLBACK_VAE_CHANNELS = (128, 256, 512, 512)


@dataclass(frozen=True)
class RunShape:
    """One call of the graph: B images (or clips of F frames), E noise draws, H x W model pixels."""

    batch: int
    ensemble: int
    height: int
    width: int
    frames: int = 1
    # The graph's attention is onnxruntime's fused kernel (the CPU variant, Extractor.graph.fused_attention): it
    # never stores the [heads, N, N] scores, so its memory grows linearly with the tokens.
    fused_attention: bool = False

    def for_graph(self, graph: Any) -> "RunShape":
        """This call on `graph` (a cpu_variant.GraphChoice; None, as for TensorRT: dense attention)."""
        return replace(self, fused_attention=bool(getattr(graph, "fused_attention", False)))

    def describe(self) -> str:
        clip = f" x {self.frames} frames" if self.frames > 1 else ""
        return f"{self.height}x{self.width}{clip}, batch {self.batch}, E={self.ensemble}"


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one run, by part (see the module's formula)."""

    weights: int
    vae: int
    attention: int
    stream: int
    overhead: int = RUNTIME_OVERHEAD
    note: str = ""  # set when the manifest lacked the workload section

    @property
    def activations(self) -> int:
        return self.vae + self.attention + self.stream + self.overhead

    @property
    def total(self) -> int:
        return self.weights + self.activations

    def describe(self, loaded: bool = False) -> str:
        if loaded:
            return f"{gib(self.activations)} (weights already loaded)"
        return f"{gib(self.total)} (weights {gib(self.weights)} + activations {gib(self.activations)})"

    def __add__(self, other: "MemoryEstimate") -> "MemoryEstimate":
        """Two graphs at once (a fused run): every part adds up, the runtime's overhead included."""
        notes = "; ".join(dict.fromkeys(n for n in (self.note, other.note) if n))
        return MemoryEstimate(self.weights + other.weights, self.vae + other.vae, self.attention + other.attention,
                              self.stream + other.stream, self.overhead + other.overhead, notes)


@dataclass(frozen=True)
class EngineMemory:
    """GPU memory of one call of a TensorRT engine, as the engine reports it (TrtRunner.memory_need): no
    estimate is needed, and none of the dense-attention terms apply (engines fuse attention)."""

    weights: int  # the engine's weights (EngineStat.TOTAL_WEIGHTS_SIZE), resident while the runner is active
    activations: int  # the context's device memory (device_memory_size_v2: the largest profile's), allocated at start
    io: int  # the call's input and output device buffers
    io_new: int  # of which not already held by the runner's buffer pool: all the call still allocates

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.io

    def __add__(self, other: "EngineMemory") -> "EngineMemory":
        return EngineMemory(self.weights + other.weights, self.activations + other.activations,
                            self.io + other.io, self.io_new + other.io_new)

    def describe(self) -> str:
        return (f"{gib(self.total)} (the engine reports weights {gib(self.weights)} + context memory "
                f"{gib(self.activations)}; input and output buffers {gib(self.io)})")


def gib(n: int) -> str:
    if n >= 1024 * GIB:
        return f"{n / (1024 * GIB):,.0f} TiB"
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def workload_of(manifest: Manifest) -> tuple[Workload, str]:
    """The manifest's workload, or conservative stand-ins (and a note saying so) for older manifests."""
    if manifest.workload is not None:
        return manifest.workload, ""
    channels = manifest.geometry.feature_channels
    heads = max(1, channels // FALLBACK_HEAD_DIM)
    return Workload(heads=heads, head_dim=max(1, channels // heads), text_tokens=FALLBACK_TEXT_TOKENS,
                    text_attention="joint", ffn_dim=4 * channels,
                    vae_channels=FALLBACK_VAE_CHANNELS, vae_attention=True), FALLBACK_WORKLOAD_NOTE


def weight_bytes(manifest: Manifest) -> int:
    return sum(int(manifest.files.get(name, {}).get("bytes", 0)) for name in (MODEL_FILE, MODEL_DATA_FILE))


def estimate(manifest: Manifest, shape: RunShape, device: str = "cpu") -> MemoryEstimate:
    """Peak memory of running the export's graph once at `shape` on `device` (the module docstring's formula)."""
    work, note = workload_of(manifest)
    geometry = manifest.geometry
    b, e, f = shape.batch, shape.ensemble, shape.frames
    tokens = (shape.height // geometry.feature_stride) * (shape.width // geometry.feature_stride) + work.extra_tokens
    vae_frames = f  # frames through the VAE
    if work.spacetime_attention and f > 1:  # one sequence of every latent frame's tokens per clip (Wan)
        tokens, f = tokens * latent_frames(geometry, geometry_frames(geometry, f)), 1
    text = work.text_tokens if work.text_attention != "none" else 0
    sequence = tokens + text if work.text_attention == "joint" else tokens
    vae = 0
    if work.vae_channels and geometry.vae_stride:
        cells = (shape.height // geometry.vae_stride) * (shape.width // geometry.vae_stride)
        copies = FUSED_VAE_CONV_COPIES if shape.fused_attention else VAE_CONV_COPIES
        conv = copies * work.vae_channels[0] * shape.height * shape.width * 4
        if not work.vae_attention:
            attention = 0
        elif shape.fused_attention:  # one head over the latent cells, the mid-block's width per cell
            attention = FUSED_ATTENTION_COPIES * attention_bytes(1, 1, cells, cells, work.vae_channels[-1],
                                                                 fused=True, threads=_threads())
        else:
            attention = VAE_ATTENTION_COPIES * cells * cells * 4
        vae = int(b * vae_frames * (conv + attention))
    if shape.fused_attention:
        attention = int(FUSED_ATTENTION_COPIES * _fused_transformer_attention(work, b * e * f, tokens, text, f))
    else:
        if work.text_attention == "joint":
            pairs = sequence ** 2
        else:  # self-attention over the image tokens, then cross-attention to the prompt
            pairs = tokens * tokens + tokens * text
        if f > 1:
            pairs += tokens * f  # temporal blocks: F x F scores per token, i.e. t F per frame
        # on the CPU fp16/bf16 graphs compute in fp32 (CPU_WIDENING): 4-byte scores there
        score_bytes = 2 if manifest.precision in ("fp16", "bf16") and device != "cpu" else 4
        attention = int(ATTENTION_COPIES * b * e * f * work.heads * pairs * score_bytes)
    stream = int(STREAM_COPIES * b * e * f * sequence * max(work.ffn_dim, 1) * 4)
    widening = CPU_WIDENING.get(str(manifest.precision), 1) if device == "cpu" else 1
    weights = int(WEIGHT_COPIES * widening * weight_bytes(manifest)) + SESSION_OVERHEAD
    return MemoryEstimate(weights, vae, attention, stream, note=note)


def geometry_frames(geometry, frames: int) -> int:
    """The clip length the graph runs: `frames`, or for a causal 3-D VAE the next 1 + s*k (extract_video pads)."""
    s = int(geometry.frame_stride)
    return frames if s == 1 else 1 + s * -(-(frames - 1) // s)


def _fused_transformer_attention(work: Workload, sequences: int, tokens: int, text: int, frames: int) -> int:
    """cpu_variant.attention_bytes of the blocks' attention calls, added up (they run one after another: an
    upper bound): joint over image + prompt tokens, or self then cross; video's temporal F x F per token."""
    def call(batch: int, q_tokens: int, kv_tokens: int) -> int:
        return attention_bytes(batch, work.heads, q_tokens, kv_tokens, work.head_dim, fused=True, threads=_threads())

    if work.text_attention == "joint":
        total = call(sequences, tokens + text, tokens + text)
    else:
        total = call(sequences, tokens, tokens) + (call(sequences, tokens, text) if text else 0)
    if frames > 1:
        total += call(sequences // frames * tokens, frames, frames)
    return total


def _threads() -> int:
    """An upper bound on the kernel's threads (one block buffer each): onnxruntime's default is the cores."""
    return os.cpu_count() or 1


def parse_bytes(text: str) -> int:
    """'8G', '8GiB', '512M', '1.5GB', '123456' -> bytes (K, M, G, T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), flags=re.IGNORECASE)
    if match is None:
        raise InputError(f"memory size {text!r}: expected a number with an optional K, M, G or T (e.g. 12G)")
    amount = float(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[
        match.group(2).upper()]
    if amount < 1:
        raise InputError(f"memory size {text!r} must be positive")
    return int(amount)


# -- refusing -----------------------------------------------------------------------------------------


class MemoryBudgetError(InputError):
    """A run would need more memory than its budget; the message gives the estimate and a size that fits."""


Run = tuple[Manifest, RunShape]  # one export's graph call


def check(manifest: Manifest, shape: RunShape, *, max_memory: int | None = None, device: str = "cpu",
          loaded: bool = True, copies: int = 1, engine: Any = None) -> MemoryEstimate | EngineMemory:
    """Refuse a run whose estimate exceeds the budget: `max_memory` bytes for the whole run (weights
    included), else what the machine has available now (then already loaded weights do not count).

    `copies`: runs at once, each with its own weights (local Ray actors). Returns the estimate when it
    fits; does nothing when the budget cannot be measured (a GPU without cuda-python).
    """
    return check_runs([(manifest, shape)], max_memory=max_memory, device=device, loaded=loaded, copies=copies,
                      engines=[engine] if engine is not None else None)


def check_runs(runs: Sequence[Run], *, max_memory: int | None = None, device: str = "cpu", loaded: bool = True,
               copies: int = 1, engines: Sequence[Any] | None = None) -> MemoryEstimate | EngineMemory:
    """`check` for graph calls that run at once (two fused exports): their estimates add up.

    engines: per run, the TensorRT runner's `memory_need` (or None for an onnxruntime graph); when every run
    has one, the engines' own numbers are checked instead of the estimate (`check_engines`)."""
    runs = list(runs)
    if engines and len(engines) == len(runs) and all(e is not None for e in engines):
        return check_engines(runs, engines, max_memory=max_memory, copies=copies)
    need_estimate = estimate_runs(runs, device)
    if max_memory is not None:
        budget, source, counts_weights = int(max_memory), "the --max-memory budget", True
    else:
        available = available_memory(device)
        if available is None:
            return need_estimate
        budget, counts_weights = available, not loaded
        source = "free GPU memory" if device == "cuda" else "available memory"
    if _bytes_needed(need_estimate, counts_weights, copies) <= budget:
        return need_estimate
    fits = largest_fitting_side(runs, budget, counts_weights, copies, device)
    advice = (f"--size {fits} fits" if fits else
              "no image size fits at this batch and ensemble: lower --ensemble or --batch-size")
    if device == "cpu" and not all(shape.fused_attention for _, shape in runs):
        fused = estimate_runs([(m, replace(shape, fused_attention=True)) for m, shape in runs], device)
        if _bytes_needed(fused, counts_weights, copies) <= budget:  # worth saying only where it fits
            advice += (", or `ditf optimize-cpu EXPORT` makes a CPU variant whose attention memory grows linearly "
                       f"(it would need about {gib(_bytes_needed(fused, counts_weights, copies))})")
    workers = f" x {copies} workers" if copies > 1 else ""
    note = f" ({need_estimate.note})" if need_estimate.note else ""
    what = runs[0][1].describe() if len(runs) == 1 else "fused run of " + " and ".join(
        f"{m.model_name} at {shape.describe()}" for m, shape in runs)
    raise MemoryBudgetError(
        f"{what} needs about {need_estimate.describe(loaded=not counts_weights)}{workers}, more than "
        f"{source} ({gib(budget)}){note}: {advice}; --max-memory sets the budget "
        "(docs/DESIGN.md, 'Memory', gives the formula)"
    )


def check_engines(runs: Sequence[Run], engines: Sequence[Any], *, max_memory: int | None = None,
                  copies: int = 1) -> EngineMemory:
    """Refuse TensorRT calls that would not fit, by what the engines report: against `max_memory`, the whole
    run (weights, context memory, I/O buffers); otherwise the buffers the call still has to allocate against
    the free GPU memory now (weights and context memory are already allocated, so they are in use, not free)."""
    needs = [need(manifest, shape) for need, (manifest, shape) in zip(engines, runs)]
    need = sum(needs[1:], needs[0])
    if max_memory is not None:
        budget, wanted, source = int(max_memory), copies * need.total, "the --max-memory budget"
    else:
        free = available_memory("cuda")
        if free is None:
            return need
        budget, wanted, source = free, copies * need.io_new, "free GPU memory"
    if wanted <= budget:
        return need
    what = runs[0][1].describe() if len(runs) == 1 else " and ".join(shape.describe() for _, shape in runs)
    workers = f" x {copies} workers" if copies > 1 else ""
    still = "" if max_memory is not None else f", of which {gib(need.io_new)} is still to allocate"
    raise MemoryBudgetError(
        f"{what} on TensorRT needs {need.describe()}{workers}{still}: more than {source} ({gib(budget)}); "
        "use a smaller --size, --batch-size or --ensemble, or rebuild the engine with smaller --max shapes "
        "(its context memory is sized for the largest profile)"
    )


def engines_of(extractor: Any) -> tuple[Any, ...]:
    """Per export an Extractor or a FusedExtractor runs: its TensorRT runner's `memory_need`, or None."""
    members = getattr(extractor, "members", None) or (extractor,)
    return tuple(getattr(member.runner, "memory_need", None) for member in members)


def estimate_runs(runs: Sequence[Run], device: str = "cpu") -> MemoryEstimate:
    """Graph calls that run at once: their estimates add up, weights included."""
    return sum((estimate(m, shape, device) for m, shape in runs[1:]), estimate(*runs[0], device))


def _bytes_needed(need: MemoryEstimate, counts_weights: bool, copies: int) -> int:
    return copies * (need.total if counts_weights else need.activations)


def largest_fitting_side(runs: Sequence[Run], budget: int, counts_weights: bool, copies: int = 1,
                         device: str = "cpu") -> int | None:
    """The largest long side (a multiple of the first export's size multiple, at most the run's) at which the
    runs fit `budget` together, for an input of the runs' aspect ratio (each export rounds it to its multiple)."""
    multiple = runs[0][0].geometry.size_multiple

    def fits(side: int) -> bool:
        resized = []
        for manifest, shape in runs:
            h, w = model_size(shape.height, shape.width, side, manifest.geometry.size_multiple)
            resized.append((manifest, replace(shape, height=h, width=w)))
        return _bytes_needed(estimate_runs(resized, device), counts_weights, copies) <= budget

    longest = max(max(shape.height, shape.width) for _, shape in runs)
    low, high = 1, max(1, longest // multiple)  # in units of `multiple`
    if not fits(low * multiple):
        return None
    while low < high:  # the estimate grows with the side: bisect
        middle = (low + high + 1) // 2
        if fits(middle * multiple):
            low = middle
        else:
            high = middle - 1
    return low * multiple


Manifests = Union[Manifest, Sequence[Manifest]]


def manifests_of(extractor: Any) -> tuple[Manifest, ...]:
    """The export(s) an Extractor or a FusedExtractor runs."""
    fused = getattr(extractor, "manifests", None)
    return tuple(fused) if fused is not None else (extractor.manifest,)


def fused_attention_of(extractor: Any) -> tuple[bool, ...]:
    """Per export an Extractor or a FusedExtractor runs: whether its graph fuses attention (the CPU variant;
    `Extractor.graph`, a cpu_variant.GraphChoice, says so; TensorRT engines have none: dense, the safe side)."""
    members = getattr(extractor, "members", None) or (extractor,)
    return tuple(bool(getattr(member.graph, "fused_attention", False)) for member in members)


def budget_check(extractor: Any) -> Callable[[Sequence[Run]], MemoryEstimate]:
    """`check_runs` with an Extractor's (or FusedExtractor's) budget and device: for code that knows the
    calls' shapes but not the extractor (the server's fused pipeline)."""
    return functools.partial(check_runs, max_memory=extractor.max_memory, device=extractor.device,
                             engines=engines_of(extractor))


def ensemble_for(manifest: Manifest, ensemble: int | None) -> int:
    """E of a call: 1 for a graph without noise (DINOv2), else the given E or the manifest's."""
    if not any(spec.name == NOISE_INPUT for spec in manifest.inputs):
        return 1
    return manifest.feature.ensemble if ensemble is None else int(ensemble)


def runs_at(manifests: Manifests, long_side: int | Sequence[int | None] | None, *,
            image_size: tuple[int, int] | None = None, batch: int = 1, ensemble: int | None = None,
            frames: int = 1, fused_attention: bool | Sequence[bool] = False) -> list[Run]:
    """Each export's graph call for an image of `image_size` (H, W; default a square) resized to `long_side`
    (one for every export, one per export, or None: each manifest's own), as preprocessing sizes it.
    `fused_attention`: whether each export's graph fuses its attention (one for all, or one per export;
    `fused_attention_of(extractor)` says it for a loaded one)."""
    manifests = (manifests,) if isinstance(manifests, Manifest) else tuple(manifests)
    sides = list(long_side) if isinstance(long_side, (tuple, list)) else [long_side] * len(manifests)
    fused = list(fused_attention) if isinstance(fused_attention, (tuple, list)) else [fused_attention] * len(manifests)
    runs = []
    for manifest, side, fused_here in zip(manifests, sides, fused):
        side = manifest.preprocess.long_side if side is None else int(side)
        check_size_limit(manifest.geometry, side)  # the export's own limit speaks first, as for one image
        height, width = image_size if image_size is not None else (side, side)
        h, w = model_size(height, width, side, manifest.geometry.size_multiple)
        runs.append((manifest, RunShape(batch, ensemble_for(manifest, ensemble), h, w, frames, bool(fused_here))))
    return runs


def check_long_side(manifests: Manifests, long_side: int | Sequence[int | None] | None, *, batch: int = 1,
                    ensemble: int | None = None, frames: int = 1, fused_attention: bool | Sequence[bool] = False,
                    max_memory: int | None = None, device: str = "cpu", loaded: bool = True,
                    copies: int = 1, engines: Sequence[Any] | None = None) -> MemoryEstimate | EngineMemory:
    """`check` for the largest input a batch run can see: a square image at its long side (both exports'
    calls together when two are fused). engines: `engines_of(extractor)` (TensorRT runners' own numbers)."""
    runs = runs_at(manifests, long_side, batch=batch, ensemble=ensemble, frames=frames,
                   fused_attention=fused_attention)
    return check_runs(runs, max_memory=max_memory, device=device, loaded=loaded, copies=copies, engines=engines)
