"""TensorRT backend, both flavours: build an engine from the export's ONNX, load it, run it.

    flavors.py   TensorRT vs TensorRT-RTX: which module, which one `--tensorrt auto` picks; the CUDA device
    profiles.py  optimisation profiles from the command line or the manifest; the profile a request needs
    records.py   engine folders and engine.json: names, and the checks made before deserialising
    builder.py   one build path for both flavours (strongly typed, TF32 off unless asked, atomic folder)
    runner.py    the engine loader and the runner (several profiles, thread-safe, pooled device buffers)

`tensorrt`, `tensorrt_rtx` and cuda-python are imported only when an engine is built or loaded.
"""

from .builder import build_engine, rtx_targets
from .flavors import (
    ENTERPRISE,
    FLAVORS,
    NOT_INSTALLED,
    RTX,
    TENSORRT_OPTIONS,
    DeviceInfo,
    Flavor,
    choose_flavor,
    current_device,
    gpu_or_none,
    import_cudart,
    import_flavor,
    installed,
)
from .profiles import Profile, check_profile, choose_profile, cli_profile, manifest_profiles, parse_size
from .records import (
    ENGINE_FILE,
    ENGINE_RECORD_FILE,
    available_engines,
    check_engine_record,
    engine_dir,
    engine_folders,
    engine_problems,
    gpu_slug,
    parse_compute_capability,
    read_engine_record,
    record_ensemble_range,
    record_ranges,
    record_flavor,
    rtx_engine_dir,
)
from .runner import DeviceBufferPool, EngineFromPath, TrtRunner, find_engine, installed_versions


def tensorrt_available() -> bool:
    """Whether either flavour of TensorRT imports here."""
    return installed(ENTERPRISE) or installed(RTX)


__all__ = [
    "ENGINE_FILE", "ENGINE_RECORD_FILE", "ENTERPRISE", "FLAVORS", "NOT_INSTALLED", "RTX", "TENSORRT_OPTIONS",
    "DeviceBufferPool", "DeviceInfo", "EngineFromPath", "Flavor", "Profile", "TrtRunner",
    "available_engines", "build_engine", "check_engine_record", "check_profile", "choose_flavor", "choose_profile",
    "cli_profile", "current_device", "engine_dir", "engine_folders", "engine_problems", "find_engine", "gpu_or_none",
    "gpu_slug", "import_cudart", "import_flavor", "installed", "installed_versions", "manifest_profiles",
    "parse_compute_capability", "parse_size", "read_engine_record", "record_ensemble_range", "record_flavor",
    "record_ranges",
    "rtx_engine_dir", "rtx_targets", "tensorrt_available",
]  # fmt: skip
