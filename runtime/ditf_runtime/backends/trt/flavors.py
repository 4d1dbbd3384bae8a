"""The two TensorRT flavours, which one to use, and the CUDA device they run on.

* TensorRT (`tensorrt`, "enterprise"): builds on the GPU that will run the engine, tuning kernels
  for it; a plan runs only on that GPU model with that TensorRT version.
* TensorRT for RTX (`tensorrt_rtx`): the same builder / network / parser / runtime API, but the
  builder compiles ahead of time without a GPU for a list of compute capabilities, and the
  runtime JIT-specialises kernels for the GPU at load.

Both modules and cuda-python are imported lazily: this module imports fine where none exists.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

from ...errors import BackendError

TENSORRT_OPTIONS = ("auto", "enterprise", "rtx")


@dataclass(frozen=True)
class Flavor:
    name: str  # engine.json "flavor"
    option: str  # the --tensorrt value
    module: str  # the Python module
    extra: str  # ditf-runtime's pip extra that installs it
    label: str  # for messages

    def install_hint(self) -> str:
        return f"pip install 'ditf-runtime[{self.extra}]'"


ENTERPRISE = Flavor("tensorrt", "enterprise", "tensorrt", "tensorrt", "TensorRT")
RTX = Flavor("tensorrt-rtx", "rtx", "tensorrt_rtx", "tensorrt-rtx", "TensorRT-RTX")
FLAVORS = {flavor.option: flavor for flavor in (ENTERPRISE, RTX)}
BY_NAME = {flavor.name: flavor for flavor in (ENTERPRISE, RTX)}

NOT_INSTALLED = (
    "no TensorRT is installed here: install TensorRT for RTX to build portable engines on any machine "
    f"({RTX.install_hint()}; no GPU needed to build), or TensorRT on the GPU machine that will serve "
    f"({ENTERPRISE.install_hint()}); or use --backend onnxruntime"
)


def import_flavor(flavor: Flavor) -> ModuleType:
    try:
        return importlib.import_module(flavor.module)
    except ImportError as exc:
        raise BackendError(
            f"{flavor.label} is not installed here (module {flavor.module!r}): {flavor.install_hint()}"
        ) from exc


def installed(flavor: Flavor) -> bool:
    try:
        import_flavor(flavor)
    except BackendError:
        return False
    return True


def library_version(module: ModuleType) -> str:
    return str(module.__version__)


def collecting_logger(trt):
    """A trt.ILogger that keeps TensorRT's errors for our messages and prints nothing."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(str(msg))

    return CollectingLogger()


def short_version(version: str) -> str:
    """'1.7.1.116' -> '1.7.1': the folder name's version (engine.json keeps the full one)."""
    return ".".join(version.split(".")[:3])


def choose_flavor(option: str) -> Flavor:
    """--tensorrt auto|enterprise|rtx -> a flavour whose module imports (and, for enterprise, a GPU).

    auto: TensorRT when it is installed and a GPU is present, else TensorRT-RTX when installed.
    """
    if option not in TENSORRT_OPTIONS:
        raise BackendError(f"unknown TensorRT flavour {option!r}: use one of {', '.join(TENSORRT_OPTIONS)}")
    if option == "auto":
        if installed(ENTERPRISE) and gpu_or_none() is not None:
            return ENTERPRISE
        if installed(RTX):
            return RTX
        if installed(ENTERPRISE):
            raise BackendError(
                "TensorRT is installed here, but it builds on the GPU that will run the engine and this machine "
                f"has none: build on the serving GPU, or install TensorRT for RTX here ({RTX.install_hint()})"
            )
        raise BackendError(NOT_INSTALLED)
    flavor = FLAVORS[option]
    import_flavor(flavor)
    if flavor is ENTERPRISE:
        try:
            current_device()
        except BackendError as exc:
            raise BackendError(
                f"--tensorrt enterprise builds on the GPU that will run the engine, and this machine has none "
                f"({exc}). Build a portable engine here with --tensorrt rtx, or build on the serving GPU."
            ) from None
    return flavor


# -- the CUDA device ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    gpu_name: str
    compute_capability: str  # "8.9"
    index: int = 0  # the CUDA device ordinal in this process (after CUDA_VISIBLE_DEVICES)

    @property
    def sm(self) -> str:
        """'8.9' -> 'sm89'."""
        return "sm" + self.compute_capability.replace(".", "")


def import_cudart():
    """cuda-python's runtime bindings; the module moved to cuda.bindings in cuda-python 12.6."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendError(
                "cuda-python is not installed: TensorRT engines need it for device memory "
                f"({RTX.install_hint()} or {ENTERPRISE.install_hint()})"
            ) from exc
    return cudart


def cuda_call(cudart, result):
    """cuda-python returns (error, *values); raise on error, return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call failed: {_cuda_error_text(cudart, error)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _cuda_error_text(cudart, error) -> str:
    describe = getattr(cudart, "cudaGetErrorString", None)
    if describe is None:
        return str(error)
    try:
        _, text = describe(error)
    except Exception:  # noqa: BLE001 - only for the message
        return str(error)
    text = text.decode() if isinstance(text, bytes) else str(text)
    return f"{text} ({getattr(error, 'name', error)})"


def parse_device(device: str | None) -> int | None:
    """'cuda' -> None (the current CUDA device), 'cuda:1' -> 1; anything else is refused."""
    if device in (None, "cuda"):
        return None
    prefix, _, number = str(device).partition(":")
    if prefix != "cuda" or not number.isdigit():
        raise BackendError(f"unknown CUDA device {device!r}: use 'cuda' (the current device) or 'cuda:N'")
    return int(number)


def current_device(device_index: int | None = None) -> DeviceInfo:
    """The GPU this process runs on: `device_index` (an ordinal after CUDA_VISIBLE_DEVICES), or the calling
    thread's current CUDA device (cudaGetDevice); BackendError (with CUDA's reason) where there is none."""
    cudart = import_cudart()
    count = cuda_call(cudart, cudart.cudaGetDeviceCount())
    if not count:
        raise BackendError("no CUDA GPU here")
    if device_index is None:
        device_index = int(cuda_call(cudart, cudart.cudaGetDevice()))
    if not 0 <= device_index < count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise BackendError(f"CUDA device {device_index} does not exist: this process sees {count} GPU(s)"
                           + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""))
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device_index))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}", device_index)


def gpu_or_none() -> DeviceInfo | None:
    try:
        return current_device()
    except BackendError:
        return None
