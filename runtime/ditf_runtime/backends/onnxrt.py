"""onnxruntime backend: a lazy session loader and a runner.

No silent fallback: every provider asked for must be available and must still be active once
the session exists (onnxruntime drops a provider whose libraries fail to load with only a log
line). Asking for CUDA on a machine without it is an error, not a quiet CPU run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BackendError
from .base import BaseRunner, TensorMeta

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(
            "onnxruntime is not installed: `pip install onnxruntime` (CPU) or `onnxruntime-gpu` (CUDA)"
        ) from exc
    return onnxruntime


def default_providers(device: str) -> list[str]:
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        # CPU stays listed so onnxruntime may place the odd shape op there; CUDA must be active.
        return [CUDA, CPU]
    if str(device).startswith("cuda:") and device[5:].isdigit():  # the N-th GPU this process sees
        return [(CUDA, {"device_id": int(device[5:])}), CPU]
    raise BackendError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


def _provider_name(spec: Any) -> str:
    return spec[0] if isinstance(spec, (tuple, list)) else str(spec)


def cpu_only(providers: Sequence[Any]) -> bool:
    """Whether every provider named (a name, or a (name, options) pair) is the CPU provider."""
    return all(_provider_name(p) == CPU for p in providers)


X64_QUANT_PRECISION = "session.x64quantprecision"


def exact_int8_kernels_needed() -> bool:
    """An x86 CPU without VNNI, where onnxruntime's default integer GEMM saturates (cpu_info.py)."""
    from ..cpu_info import this_cpu

    return this_cpu().needs_exact_int8_option


def exact_int8_option(session) -> bool:
    """Whether `session` was opened with the exact-integer-kernel option."""
    try:
        return session.get_session_options().get_session_config_entry(X64_QUANT_PRECISION) == "1"
    except RuntimeError:  # never set: onnxruntime raises for a missing key
        return False

# Protobuf cannot serialise a model of 2 GiB or more; keep well below it. A larger model is never
# handed over as bytes: it is written with external data and opened by path (ditf_calib.graph.session).
MAX_IN_MEMORY_MODEL_BYTES = 1_800_000_000


def create_session(
    model: str | os.PathLike | bytes,
    *,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
    log_level: int = 3,
    disabled_optimizers: Sequence[str] = (),
    priority_order: bool = False,
    memory_arena: bool = True,
):
    """The one way ditf opens an onnxruntime InferenceSession (runtime, exporter parity, calibration).

    model: a path (external data is found beside it) or serialised bytes under MAX_IN_MEMORY_MODEL_BYTES.
    providers: default CPU only. Every provider asked for must be available and still active once the
    session exists: no silent fallback. threads: intra-op threads (default: onnxruntime's).
    log_level: onnxruntime's severity (3 = errors only; provider placement chatter is not for users).
    disabled_optimizers: onnxruntime graph transformers to skip, by name (e.g. "ConstantFolding").
    priority_order: run nodes in the graph's own order where dependencies allow (onnxruntime's priority-based
    execution order); the default order walks the graph depth-first from its outputs instead.
    memory_arena: onnxruntime's CPU arena (default on). Off, each tensor is allocated and freed on its own, so
    memory freed by one stage of a graph goes back to the system instead of staying in an arena region that a
    later stage's larger tensors cannot use (a once-per-input run, as calibration's, gains nothing from it).
    """
    ort = import_onnxruntime()
    if isinstance(model, (bytes, bytearray)):
        if len(model) >= MAX_IN_MEMORY_MODEL_BYTES:
            raise BackendError(
                f"an in-memory ONNX model of {len(model) / 1e9:.2f} GB is over the "
                f"{MAX_IN_MEMORY_MODEL_BYTES / 1e9:.1f} GB limit: save it with external data and pass its path"
            )
        what, source = "the in-memory model", bytes(model)
    else:
        what = source = str(model)
    providers = [CPU] if providers is None else list(providers)
    if not providers:
        raise BackendError("providers is empty: name at least one onnxruntime execution provider")
    if threads is not None and int(threads) < 1:
        raise BackendError(f"threads must be >= 1, got {threads}")
    requested = [_provider_name(p) for p in providers]
    _require_available(requested, ort.get_available_providers())
    options = ort.SessionOptions()
    options.log_severity_level = int(log_level)
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    # Memory-pattern planning allocates one block per planned run beside the arena's own chunks: from the second
    # run on, a session held about twice the first run's peak (medium model, 512x512, E=8: 6.5 GB vs 3.7 GB) for
    # no speed (bench/bench_cpu_options.py: 1.00x). Servers, batch jobs and parity all run a session repeatedly.
    options.enable_mem_pattern = False
    if priority_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if not memory_arena:
        options.enable_cpu_mem_arena = False
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    # x86 CPUs without VNNI (SSE4.1/AVX2/AVX-512 without VNNI) saturate onnxruntime's default U8S8 integer GEMM
    # (pairs of products summed in 16 bits): an INT8 export gated at cosine 0.999 read 0.96 there. The option
    # switches them to exact U8U8 kernels. It is set only where it matters: its weight rewrite (s8 -> u8) cannot
    # load a QLinearConv with int8 activations (the CPU variant of an --int8-convs export), on any CPU. Such a
    # graph loads without it, and the once-per-machine INT8 check (int8_check.py) judges what it computes.
    if exact_int8_kernels_needed():
        options.add_session_config_entry(X64_QUANT_PRECISION, "1")
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=providers, **extra)
            _require_active(requested, session.get_providers())
            return session
        except Exception:  # noqa: BLE001 - retried without the option below; a real fault fails there too
            options.add_session_config_entry(X64_QUANT_PRECISION, "0")
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers, **extra)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BackendError(f"onnxruntime cannot load {what}: {exc}") from exc
    _require_active(requested, session.get_providers())
    return session


def check_providers(providers: Sequence[Any]) -> None:
    """Every provider asked for is available in this onnxruntime (without opening a session)."""
    _require_available([_provider_name(p) for p in providers], import_onnxruntime().get_available_providers())


def _require_available(requested: list[str], available: list[str]) -> None:
    missing = [p for p in requested if p not in available]
    if missing:
        hint = (
            " (install onnxruntime-gpu, which brings the CUDA and TensorRT providers)"
            if any(p in (CUDA, TENSORRT) for p in missing)
            else ""
        )
        raise BackendError(
            f"onnxruntime execution provider(s) {missing} not available here{hint}; "
            f"available: {available}. Refusing to fall back to another provider."
        )


def _require_active(requested: list[str], active: list[str]) -> None:
    """onnxruntime drops a provider whose libraries fail to load with only a log line: refuse that."""
    dropped = [p for p in requested if p not in active]
    if dropped:
        raise BackendError(
            f"onnxruntime accepted but did not activate {dropped} (active: {active}); its libraries "
            "probably failed to load (CUDA/cuDNN versions). Refusing to run on another provider."
        )


class SessionFromOnnx:
    """Lazy loader: keeps the path and options; calling it builds the InferenceSession (create_session)."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str = "cpu",
        providers: Sequence[Any] | None = None,
        threads: int | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.providers = list(providers) if providers is not None else default_providers(device)
        if not self.providers:
            raise BackendError("providers is empty: name at least one onnxruntime execution provider")
        if threads is not None and int(threads) < 1:
            raise BackendError(f"threads must be >= 1, got {threads}")
        self.threads = threads

    def __call__(self):
        return create_session(self.model_path, providers=self.providers, threads=self.threads)


class OnnxrtRunner(BaseRunner):
    backend = "onnxruntime"

    def __init__(self, session_loader: SessionFromOnnx, graph: Any = None) -> None:
        """graph: the loader's cpu_variant.GraphChoice (which file and why), when it made one."""
        super().__init__()
        self.session_loader = session_loader
        self.graph = graph
        self.session = None

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers()) if self.session is not None else []

    def custom_metadata(self) -> dict[str, str]:
        self._require_active()
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def _activate(self) -> None:
        self.session = self.session_loader()

    def _deactivate(self) -> None:
        self.session = None

    def _input_metadata(self) -> dict[str, TensorMeta]:
        metas = {}
        for arg in self.session.get_inputs():
            dtype = _ORT_TYPES.get(arg.type)
            if dtype is None:
                raise BackendError(f"graph input {arg.name!r} has unsupported type {arg.type}")
            shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
            metas[arg.name] = TensorMeta(arg.name, np.dtype(dtype), shape)
        return metas

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        try:
            values = self.session.run(names, feed)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"onnxruntime failed to run {self.session_loader.model_path}: {exc}") from exc
        return dict(zip(names, values))
