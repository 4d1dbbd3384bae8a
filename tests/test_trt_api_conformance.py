"""Every TensorRT name `backends/trt/` uses exists in the real bindings, with a signature that takes our call;
and the stand-in (tests/trt_standin.py) offers nothing the real bindings lack.

Checked against the installed `tensorrt_rtx` (and `tensorrt` wherever it installs) by introspection: classes,
enum members, properties (pybind `property` objects) and methods, whose pybind signatures are read from
their `__doc__` (`name(self: T, a: int, b: bool = False) -> R`, one line per overload). `CALLS` is the
list of what our code calls; an AST scan of backends/trt/*.py makes sure nothing is called there that the
list (or the list of names that are not TensorRT's) leaves out. No GPU is needed: nothing is run.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

TRT_DIR = Path(__file__).resolve().parents[1] / "runtime" / "ditf_runtime" / "backends" / "trt"

# (owner, member, how): owner "" is the module itself. how: "class", "enum:<members>", "property", or a call
# ("call", positional count, keyword names) as our code makes it.
CALLS = [
    # module-level
    ("", "Builder", ("call", 1, ())), ("", "OnnxParser", ("call", 2, ())), ("", "Runtime", ("call", 1, ())),
    ("", "nptype", ("call", 1, ())), ("", "ILogger", "class"), ("", "IProgressMonitor", "class"),
    ("", "ComputeCapability", "enum:SM75,SM80,SM86,SM89,SM120"),
    ("", "NetworkDefinitionCreationFlag", "enum:STRONGLY_TYPED"), ("", "BuilderFlag", "enum:TF32"),
    ("", "MemoryPoolType", "enum:WORKSPACE"), ("", "TensorIOMode", "enum:INPUT,OUTPUT"),
    ("", "EngineValidity", "enum:INVALID,VALID"), ("", "EngineInvalidityDiagnostics", "enum:MALFORMED_ENGINE"),
    ("", "EngineStat", "enum:TOTAL_WEIGHTS_SIZE"), ("", "DataType", "enum:FLOAT,HALF,BF16,INT8,INT32,INT64,BOOL"),
    ("ILogger", "Severity", "enum:ERROR"),
    ("ILogger", "log", ("call", 2, ())),
    ("IProgressMonitor", "phase_start", ("call", 3, ())), ("IProgressMonitor", "step_complete", ("call", 2, ())),
    ("IProgressMonitor", "phase_finish", ("call", 1, ())),
    # build
    ("Builder", "create_network", ("call", 1, ())), ("Builder", "create_builder_config", ("call", 0, ())),
    ("Builder", "create_optimization_profile", ("call", 0, ())),
    ("Builder", "build_serialized_network", ("call", 2, ())),
    ("OnnxParser", "parse_from_file", ("call", 1, ())), ("OnnxParser", "num_errors", "property"),
    ("OnnxParser", "get_error", ("call", 1, ())),
    ("ParserError", "node", ("call", 0, ())), ("ParserError", "node_name", ("call", 0, ())),
    ("ParserError", "node_operator", ("call", 0, ())),
    ("IBuilderConfig", "clear_flag", ("call", 1, ())), ("IBuilderConfig", "set_memory_pool_limit", ("call", 2, ())),
    ("IBuilderConfig", "add_optimization_profile", ("call", 1, ())),
    ("IBuilderConfig", "num_compute_capabilities", "property"),
    ("IBuilderConfig", "set_compute_capability", ("call", 2, ())),
    ("IBuilderConfig", "create_timing_cache", ("call", 1, ())),
    ("IBuilderConfig", "set_timing_cache", ("call", 1, ("ignore_mismatch",))),
    ("IBuilderConfig", "get_timing_cache", ("call", 0, ())), ("IBuilderConfig", "progress_monitor", "property"),
    ("ITimingCache", "serialize", ("call", 0, ())),
    ("IOptimizationProfile", "set_shape", ("call", 4, ())),
    # load and run
    ("Runtime", "get_engine_validity", ("call", 1, ())), ("Runtime", "deserialize_cuda_engine", ("call", 1, ())),
    ("ICudaEngine", "num_io_tensors", "property"), ("ICudaEngine", "num_optimization_profiles", "property"),
    ("ICudaEngine", "get_tensor_name", ("call", 1, ())), ("ICudaEngine", "get_tensor_mode", ("call", 1, ())),
    ("ICudaEngine", "get_tensor_dtype", ("call", 1, ())), ("ICudaEngine", "get_tensor_shape", ("call", 1, ())),
    ("ICudaEngine", "get_tensor_profile_shape", ("call", 2, ())),
    ("ICudaEngine", "create_execution_context", ("call", 1, ())),
    ("ICudaEngine", "create_execution_context", ("call", 0, ())),
    ("ICudaEngine", "device_memory_size_v2", "property"),
    ("ICudaEngine", "get_device_memory_size_for_profile_v2", ("call", 1, ())),
    ("ICudaEngine", "get_engine_stat", ("call", 1, ())),
    ("IExecutionContext", "set_optimization_profile_async", ("call", 2, ())),
    ("IExecutionContext", "set_input_shape", ("call", 2, ())),
    ("IExecutionContext", "set_tensor_address", ("call", 2, ())),
    ("IExecutionContext", "get_tensor_shape", ("call", 1, ())),
    ("IExecutionContext", "execute_async_v3", ("call", 1, ())),
]
RTX_ONLY = [
    ("ICudaEngine", "create_runtime_config", ("call", 0, ())),
    ("IRuntimeConfig", "create_runtime_cache", ("call", 0, ())),
    ("IRuntimeConfig", "set_runtime_cache", ("call", 1, ())),
    ("IRuntimeConfig", "get_runtime_cache", ("call", 0, ())),
    ("IRuntimeCache", "serialize", ("call", 0, ())), ("IRuntimeCache", "deserialize", ("call", 1, ())),
]
# Attribute names in backends/trt/ that are not TensorRT's: Python's, numpy's, cuda-python's, ours.
NOT_TENSORRT = {
    # python / numpy / pathlib / threading / json / dataclasses
    "append", "get", "items", "keys", "values", "pop", "clear", "join", "split", "strip", "lower", "upper", "startswith",
    "removeprefix", "lstrip", "rstrip", "decode", "format", "replace", "is_file", "is_dir", "iterdir", "name", "parent",
    "read_bytes", "read_text", "write_text", "exists", "stat", "st_size", "relative_to", "as_posix", "with_name",
    "hexdigest", "sha256", "loads", "dumps", "dtype", "empty", "itemsize", "prod", "ascontiguousarray", "nbytes",
    "ctypes", "data", "shape", "Lock", "Event", "Thread", "start", "is_set", "set", "perf_counter", "isenabled",
    "collect", "disable", "enable", "warn", "environ", "import_module", "group", "fullmatch", "sub", "shapes",
    "partition", "isdigit", "describe", "to_record", "from_record", "index", "sm", "gpu_name", "compute_capability",
    "errors", "cancelled", "depth", "log", "started", "label", "option", "module", "extra", "install_hint",
    "value", "days", "now", "isoformat", "__members__", "__version__", "__init__", "mkdir", "unlink",
    "Severity", "JSONDecodeError", "PathLike", "ndarray", "utc", "is_alive",
    # our own objects: Precision (its members and the capability floor), Manifest, Geometry, RunShape, _Target, Profile
    "FP32", "FP8", "min_compute_capability",
    "batch", "ensemble", "frames", "height", "width", "geometry", "size_multiple", "vae_stride", "feature_stride",
    "feature_channels", "latent_channels", "frame_axis", "files", "family", "model_name", "precision",
    "tensorrt_profiles", "inputs", "verify_files", "default_targets", "targets", "folder", "version",
    # cuda-python (checked against cuda.bindings.runtime below)
    "cudaError_t", "cudaSuccess", "cudaMemcpyKind", "cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost",
    "cudaGetDeviceCount", "cudaGetDevice", "cudaSetDevice", "cudaGetDeviceProperties", "cudaGetErrorString",
    "cudaMalloc", "cudaFree", "cudaMemcpyAsync", "cudaStreamCreate", "cudaStreamDestroy", "cudaStreamSynchronize",
    "major", "minor",
}


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


FLAVORS = [pytest.param(name, marks=pytest.mark.skipif(_module(name) is None, reason=f"{name} is not installed"))
           for name in ("tensorrt_rtx", "tensorrt")]


def _signatures(doc: str, name: str) -> list[list[tuple[str, bool]]]:
    """pybind docstring -> per overload, its parameters after self as (name, has default)."""
    found = []
    for match in re.finditer(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) ->", doc or "", flags=re.MULTILINE):
        params = []
        depth, current = 0, ""
        for ch in match.group(1) + ",":
            if ch in "[(":
                depth += 1
            elif ch in "])":
                depth -= 1
            if ch == "," and depth == 0:
                if current.strip():
                    params.append(current.strip())
                current = ""
            else:
                current += ch
        parsed = [(p.split(":")[0].strip(), "=" in p) for p in params]
        found.append([p for p in parsed if p[0] != "self"])
    return found


def _accepts(signatures, positional: int, keywords: tuple[str, ...]) -> bool:
    for params in signatures:
        names = [n for n, _ in params]
        required = sum(1 for _, default in params if not default)
        if (len(params) >= positional + len(keywords) and all(k in names[positional:] for k in keywords)
                and positional + len(keywords) >= required):
            return True
    return False


def _check(trt, owner: str, member: str, how) -> str | None:
    """None when `trt` has what we use as we use it; else what is wrong."""
    holder = trt if not owner else getattr(trt, owner, None)
    if holder is None:
        return f"{owner} missing"
    if not hasattr(holder, member):
        return f"{owner or trt.__name__}.{member} missing"
    attr = getattr(holder, member)
    where = f"{owner or trt.__name__}.{member}"
    if how == "class":
        return None if isinstance(attr, type) else f"{where} is not a class"
    if how == "property":
        return None if isinstance(attr, property) else f"{where} is not a property ({type(attr).__name__})"
    if isinstance(how, str) and how.startswith("enum:"):
        missing = [m for m in how[5:].split(",") if m not in getattr(attr, "__members__", {})]
        return f"{where} lacks members {missing}" if missing else None
    _, positional, keywords = how
    if isinstance(attr, type):  # a constructor
        doc, name = attr.__init__.__doc__, "__init__"
    elif isinstance(attr, property):
        return f"{where} is a property, called as a method"
    else:
        doc, name = attr.__doc__, member
    signatures = _signatures(doc, name)
    if not signatures:  # a plain Python function (nptype): inspect it
        import inspect

        params = [(p.name, p.default is not inspect.Parameter.empty)
                  for p in inspect.signature(attr).parameters.values() if p.name != "self"]
        signatures = [params]
    if not _accepts(signatures, positional, keywords):
        return f"{where}{signatures} does not take {positional} positional argument(s) and {keywords}"
    return None


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_tensorrt_name_we_use_exists_with_a_compatible_signature(flavor):
    trt = importlib.import_module(flavor)
    used = CALLS + (RTX_ONLY if flavor == "tensorrt_rtx" else [])
    problems = [p for owner, member, how in used if (p := _check(trt, owner, member, how))]
    if flavor == "tensorrt":  # TensorRT's own: no runtime config (the runner checks with hasattr)
        problems = [p for p in problems if "create_runtime_config" not in p]
    assert problems == []


def test_the_signature_check_can_fail():
    """The checker refuses a wrong arity, a missing keyword, a missing member and a property called as a method."""
    trt = pytest.importorskip("tensorrt_rtx")
    assert _check(trt, "IExecutionContext", "set_input_shape", ("call", 3, ()))
    assert _check(trt, "IBuilderConfig", "set_timing_cache", ("call", 1, ("no_such_keyword",)))
    assert _check(trt, "ICudaEngine", "no_such_method", ("call", 0, ()))
    assert _check(trt, "ICudaEngine", "device_memory_size_v2", ("call", 0, ()))
    assert _check(trt, "", "EngineStat", "enum:NO_SUCH_MEMBER")


def test_backends_trt_calls_nothing_the_list_leaves_out():
    """Every attribute name used in backends/trt/*.py is in CALLS / RTX_ONLY or is known not to be TensorRT's."""
    listed = {member for _, member, _ in CALLS + RTX_ONLY} | {owner for owner, _, _ in CALLS + RTX_ONLY}
    listed |= {m for _, _, how in CALLS if isinstance(how, str) and how.startswith("enum:") for m in how[5:].split(",")}
    ours = set()
    for path in TRT_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        fields = {t.attr for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  for t in n.targets if isinstance(t, ast.Attribute)}
        annotated = {n.target.id for n in ast.walk(tree) if isinstance(n, ast.AnnAssign)
                     and isinstance(n.target, ast.Name)}
        ours |= defined | fields | annotated
        ours |= {a.attr for a in ast.walk(tree) if isinstance(a, ast.Attribute)
                 and isinstance(a.value, ast.Name) and a.value.id in ("self", "cls")}
    unknown = set()
    for path in TRT_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                name = node.attr
                if name not in listed and name not in NOT_TENSORRT and name not in ours and not name.startswith("_"):
                    unknown.add(f"{path.name}: .{name}")
    assert unknown == set(), "add these to CALLS (TensorRT's) or NOT_TENSORRT (not TensorRT's)"


# -- the stand-in -----------------------------------------------------------------------------------------------

STANDIN_BOOKKEEPING = {  # the stand-in's own test state, not an API it offers
    "StandInEngine": {"cuda", "geometry", "profiles", "weight", "bias", "contexts", "executions", "device",
                      "violations", "released", "dtypes", "weights", "activations", "compute"},
    "StandInRtxEngine": {"cuda", "geometry", "profiles", "weight", "bias", "contexts", "executions", "device",
                         "violations", "released", "dtypes", "weights", "activations", "compute"},
    "StandInContext": {"engine", "config", "profile", "shapes", "addresses", "switches"},
    "StandInRuntimeConfig": set(), "StandInRuntimeCache": {"kernels", "loaded", "MAGIC"},
    "StandInTrt": set(),
}
STANDS_FOR = {"StandInEngine": "ICudaEngine", "StandInRtxEngine": "ICudaEngine", "StandInContext": "IExecutionContext",
              "StandInRuntimeConfig": "IRuntimeConfig", "StandInRuntimeCache": "IRuntimeCache", "StandInTrt": ""}


def _public(obj) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def test_the_stand_in_offers_nothing_the_real_bindings_lack():
    trt = pytest.importorskip("tensorrt_rtx")
    import trt_standin

    extra = []
    for standin, real_name in STANDS_FOR.items():
        cls = getattr(trt_standin, standin)
        real = trt if not real_name else getattr(trt, real_name)
        names = _public(cls) - STANDIN_BOOKKEEPING[standin]
        if standin == "StandInTrt":
            names -= _public(type("x", (), {}))  # SimpleNamespace's own
        extra += [f"{standin}.{n}" for n in sorted(names) if not hasattr(real, n)]
    for enum_name in ("TensorIOMode", "DataType", "EngineStat"):
        members = set(getattr(trt_standin.StandInTrt, enum_name).__members__)
        extra += [f"{enum_name}.{m}" for m in sorted(members - set(getattr(trt, enum_name).__members__))]
    assert extra == []


def test_the_stand_in_cuda_offers_only_cuda_python_names():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        pytest.skip("cuda-python is not installed")
    import trt_standin

    names = {n for n in _public(trt_standin.StandInCuda) if n.startswith("cuda")}
    assert names and {n for n in names if not hasattr(cudart, n)} == set()
    assert {"cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"} <= set(cudart.cudaMemcpyKind.__members__)


def test_the_stand_in_nptype_follows_the_real_one():
    """The real nptype maps each DataType to its numpy type and refuses what is not one; so does the stand-in."""
    trt = pytest.importorskip("tensorrt_rtx")
    import numpy as np
    import trt_standin

    standin = trt_standin.StandInTrt
    for name in ("FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL"):
        real = trt.DataType.__members__[name]
        assert np.dtype(standin.nptype(standin.DataType[name])) == np.dtype(trt.nptype(real))
    with pytest.raises(TypeError):
        standin.nptype("float32")
