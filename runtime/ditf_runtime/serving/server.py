"""`ditf serve EXPORT_DIR`: the `extract` and `match` models on a real Triton server (PyTriton); two
exports (`--model A --model B`) serve their fused features.

nvidia-pytriton bundles a Triton Inference Server (python backend only) that also runs on a
CPU-only machine. Triton handles HTTP/gRPC, dynamic batching and the request queue; each batch
reaches this process's FeaturePipeline (pipeline.py), which runs the loaded Extractor.

One trap, fixed here: Triton's python-backend stub links a libpython by soname. With a Python
that is not the system's (pyenv, a source build) the loader finds the SYSTEM libpython of the
same minor version, the stub runs two different CPython builds at once and the model fails to
load ('_thread.RLock' object has no attribute '_recursion_count'), or finds none at all.
`use_own_libpython` puts this interpreter's own LIBDIR first on LD_LIBRARY_PATH before Triton
starts (PyTriton copies os.environ into the server's environment), so the stub always loads
the running Python's library.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from ..errors import BackendError, DitfError
from ..loading import LoadOptions
from ..manifest import Manifest
from ..memory import budget_check
from ..fusion import FusedExtractor
from ..jobs import as_export_dirs
from .admission import DEFAULT_WAIT_S, Admission
from .pipeline import FeaturePipeline, Member
from .pytriton_errors import one_line_errors
from .protocol import EXTRACT_MODEL, MATCH_MODEL, Port, ports, served_geometry

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_QUEUE_DELAY_US = 2000

PYTRITON_MISSING = (
    "nvidia-pytriton is not installed: `pip install 'ditf-runtime[serve]'` (it bundles the Triton server; "
    "Linux x86_64/aarch64, glibc >= 2.35)"
)


def own_libpython() -> Path | None:
    """This interpreter's shared libpython (LIBDIR/INSTSONAME), or None for a static build."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not soname or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    path = Path(libdir) / soname
    return path if path.is_file() else None


def python_backend_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) with this Python's LIBDIR first on LD_LIBRARY_PATH.

    Raises BackendError when this Python has no shared libpython: the stub would then load
    whatever libpython the system has, a different build.
    """
    env = dict(os.environ if env is None else env)
    library = own_libpython()
    if library is None:
        raise BackendError(
            f"this Python ({sys.executable}) has no shared libpython, which Triton's python backend loads; "
            "use a Python built with --enable-shared (the system python3, or pyenv with "
            "PYTHON_CONFIGURE_OPTS=--enable-shared)"
        )
    libdir = str(library.parent)
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *rest])
    return env


def use_own_libpython() -> None:
    """Set LD_LIBRARY_PATH in this process so a Triton started from it loads our libpython."""
    os.environ["LD_LIBRARY_PATH"] = python_backend_env()["LD_LIBRARY_PATH"]


def check_ports(host: str, ports: dict[str, int | None]) -> None:
    """Refuse, in a moment, ports that are taken (or given twice), naming the option that chose each.

    Triton itself would wait a minute or two and then fail without naming the port. A port freed
    by a recent server (TIME_WAIT) is fine: SO_REUSEADDR, as servers bind.
    """
    chosen = {option: port for option, port in ports.items() if port is not None}
    seen: dict[int, str] = {}
    for option, port in chosen.items():
        if port in seen:
            raise BackendError(f"{option} and {seen[port]} are both {port}: give each its own port")
        seen[port] = option
    for option, port in chosen.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise BackendError(f"port {port} ({option}) on {host} is already in use: stop what listens "
                                       f"there or choose another {option}") from None
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
                    reason = "is not an address of this machine" if exc.errno == errno.EADDRNOTAVAIL else \
                        "needs privileges (ports below 1024)"
                    raise BackendError(f"cannot listen on {host}:{port} ({option}): {host} {reason}") from None
                raise BackendError(f"cannot listen on {host}:{port} ({option}): {exc.strerror}") from None


def default_log_file(http_port: int) -> Path:
    """Where Triton's own log goes unless told otherwise: one file per HTTP port, in the temp folder."""
    return Path(tempfile.gettempdir()) / f"ditf-triton-{http_port}.log"


def _import_pytriton():
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        raise BackendError(PYTRITON_MISSING) from exc
    return Triton, TritonConfig, ModelConfig, DynamicBatcher, Tensor


def _infer_function(pipeline: FeaturePipeline, task: str):
    """A PyTriton infer callable (a list of requests in, a list of responses out)."""

    def infer(requests):
        feeds = [dict(request.items()) for request in requests]
        results = pipeline.handle(task, feeds)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed and len(failed) == len(results):
            raise failed[0]  # a proper Triton error (a malformed request nearly always travels alone)
        # PyTriton can fail only a whole batch: keep the good requests' results and hand each
        # failed one its reason in the `error` output (protocol.py).
        return [
            pipeline.failure_response(task, feed, result) if isinstance(result, Exception) else result
            for feed, result in zip(feeds, results)
        ]

    return infer


class FeatureServer:
    """Triton with `extract` and `match` for one export, or two fused ones (`export_dir` a pair, `weights`);
    `start()`, then `serve_forever()` or `stop()`.

    `load` says how the export is loaded (backend, device, threads, verify); requests are batched
    by Triton's dynamic batcher, up to `max_batch_size` rows after at most `queue_delay_us`. Graph calls share
    one memory budget (admission.py): a call that does not fit beside those running waits up to `busy_timeout_s`,
    then gets a "server is busy" error.
    """

    def __init__(
        self,
        export_dir: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        host: str = "127.0.0.1",
        http_port: int = DEFAULT_HTTP_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        metrics_port: int | None = None,
        load: LoadOptions = LoadOptions(),
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
        log_verbose: int = 0,
        weights: Sequence[float] | None = None,
        log_file: str | os.PathLike | None = None,
        busy_timeout_s: float = DEFAULT_WAIT_S,
    ) -> None:
        self.export_dirs = as_export_dirs(export_dir)
        self.export_dir = self.export_dirs[0]
        self.weights = weights
        self.host = host
        self.http_port = int(http_port)
        self.grpc_port = int(grpc_port)
        self.metrics_port = metrics_port
        self.load_options = load
        self.max_batch_size = int(max_batch_size)
        self.queue_delay_us = int(queue_delay_us)
        self.log_verbose = int(log_verbose)
        self.busy_timeout_s = float(busy_timeout_s)
        # Triton's own log (its ~55 start-up lines, CUDA notes on CPU machines): a file, not the terminal.
        self.log_file = Path(log_file) if log_file is not None else default_log_file(self.http_port)
        self.extractor = None
        self.triton = None
        self._workspace: tempfile.TemporaryDirectory | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    def check_ports(self) -> None:
        """Refuse ports that are taken, at once (check_ports), before anything is loaded or printed."""
        check_ports(self.host, {"--http-port": self.http_port, "--grpc-port": self.grpc_port,
                                "--metrics-port": self.metrics_port})

    def start(self) -> FeatureServer:
        """Check the ports, load the export, start Triton; on any failure or interruption (Ctrl-C, or
        SIGTERM where the caller maps it to KeyboardInterrupt) everything started so far is stopped and
        the temporary workspace removed."""
        self.check_ports()
        Triton, TritonConfig, ModelConfig, DynamicBatcher, Tensor = _import_pytriton()
        use_own_libpython()
        try:
            self._start(Triton, TritonConfig, ModelConfig, DynamicBatcher, Tensor)
        except DitfError:
            self.stop()
            raise
        except Exception as exc:  # noqa: BLE001 - PyTriton raises assorted errors on a failed start
            self.stop()
            raise BackendError(f"Triton failed to start on {self.host} ({type(exc).__name__}: {exc}); its log: "
                               f"{self.log_file}") from exc
        except BaseException:  # KeyboardInterrupt, SystemExit: leave nothing behind
            self.stop()
            raise
        return self

    def _start(self, Triton, TritonConfig, ModelConfig, DynamicBatcher, Tensor) -> None:
        manifests = [Manifest.load(d) for d in self.export_dirs]
        self.extractor = self.load_options.load(*self.export_dirs, weights=self.weights)
        max_pixels = self.load_options.max_pixels
        # One memory account for every graph call of this server, whichever Triton thread makes it (admission.py).
        admission = Admission(manifests, max_memory=self.load_options.max_memory, device=self.extractor.device,
                              wait_s=self.busy_timeout_s)
        if isinstance(self.extractor, FusedExtractor):
            members = [Member(m.manifest, m.run, _fixed_ensemble(m), m.graph) for m in self.extractor.members]
            pipeline = FeaturePipeline.fused(members, self.extractor.weights, max_batch_size=self.max_batch_size,
                                             max_pixels=max_pixels, check_memory=budget_check(self.extractor),
                                             admission=admission)
        else:
            pipeline = FeaturePipeline(manifests[0], self.extractor.run, max_batch_size=self.max_batch_size,
                                       fixed_ensemble=_fixed_ensemble(self.extractor), max_pixels=max_pixels,
                                       graph=self.extractor.graph, admission=admission)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        config = TritonConfig(
            http_address=self.host,
            http_port=self.http_port,
            grpc_address=self.host,
            grpc_port=self.grpc_port,
            allow_metrics=self.metrics_port is not None,
            metrics_port=self.metrics_port,
            log_verbose=self.log_verbose,
            log_file=self.log_file,
            exit_timeout_secs=5,
        )
        # PyTriton's own notes ("Please wait", readiness polling) would reach the terminal as warnings.
        logging.getLogger("pytriton").setLevel(logging.ERROR)
        # Our own workspace (sockets, model store, a copy of the Triton binaries), removed with the server.
        self._workspace = tempfile.TemporaryDirectory(prefix="ditf-serve-")
        # The models are written into a local model store before Triton starts, and Triton loads them before it
        # opens its ports: /v2/health/ready (and the port itself) then means "extract and match are loaded".
        # PyTriton's default starts Triton first and loads the models over its API afterwards: the server
        # answered ready, with nothing loaded, seconds before `extract` could take a request.
        from pytriton.triton import TritonLifecyclePolicy

        workspace = Path(self._workspace.name) / "pytriton"
        self.triton = Triton(config=config, workspace=workspace, triton_lifecycle_policy=TritonLifecyclePolicy(
            launch_triton_on_startup=False, local_model_store=True))
        batching = ModelConfig(
            batching=True,
            max_batch_size=self.max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=self.queue_delay_us),
        )
        for task in (EXTRACT_MODEL, MATCH_MODEL):
            inputs, outputs = ports(task, served_geometry(manifests))
            self.triton.bind(
                model_name=task,
                infer_func=_infer_function(pipeline, task),
                inputs=[_pytriton_tensor(Tensor, p) for p in inputs],
                outputs=[_pytriton_tensor(Tensor, p) for p in outputs],
                config=batching,
                strict=False,
            )
        for task in (EXTRACT_MODEL, MATCH_MODEL):
            one_line_errors(workspace / "model-store" / task)
        self.triton.run()
        # What the Triton process still prints itself ("Signal (15) received." on shutdown) PyTriton echoes to
        # our stdout; its log file has the rest. PyTriton 0.7 has no option for this: a private flag, if there.
        process = getattr(self.triton, "_triton_server", None)
        if hasattr(process, "_verbose"):
            process._verbose = False

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM or until Triton dies, then stop."""
        if self.triton is None:
            raise BackendError("start() the server first")
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None
        ):  # a caller's own SIGTERM handler (ditf serve's) stays
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self.triton.serve()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop Triton, close the model and remove the workspace; each step runs even if one before fails."""
        triton, extractor, workspace = self.triton, self.extractor, self._workspace
        self.triton = self.extractor = self._workspace = None
        try:
            if triton is not None:
                triton.stop()
        finally:
            try:
                if extractor is not None:
                    extractor.close()
            finally:
                if workspace is not None:
                    workspace.cleanup()

    def __enter__(self) -> FeatureServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _fixed_ensemble(extractor) -> int | None:
    """The one E a TensorRT engine's profiles take (None for onnxruntime)."""
    if extractor.backend != "tensorrt":
        return None
    from ..backends.trt import read_engine_record

    return read_engine_record(extractor.runner.engine_loader.folder).get("ensemble")


def _pytriton_tensor(Tensor, port: Port):
    dtype = bytes if port.dtype == object else port.dtype.type  # PyTriton spells BYTES as `bytes`
    return Tensor(name=port.name, dtype=dtype, shape=port.shape, optional=port.optional)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
