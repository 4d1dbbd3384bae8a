"""Servers for the serving tests, on loopback only: `ditf serve` or the bundled tritonserver as
subprocesses in their own session, so a test can stop them gracefully or kill the whole tree.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (the server and every child it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: session id, fields[0]: state
            pids.append(int(entry.name))
    return pids


def _shm_in_use(pid: int) -> set[str]:
    found = set()
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if "/dev/shm/" in line:
                found.add(line[line.index("/dev/shm/") :].split(" (deleted)")[0])
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("/dev/shm/"):
                found.add(target.split(" (deleted)")[0])
    except OSError:  # the process just exited
        pass
    return found


class ServerProcess:
    """A server subprocess in a new session; `url`/`grpc_url` once ready, `stop()` or `kill()`."""

    def __init__(self, command: list[str], http_port: int, grpc_port: int, log: Path, env=None) -> None:
        self.command, self.log_path = command, log
        self.url, self.grpc_url = f"http://{HOST}:{http_port}", f"grpc://{HOST}:{grpc_port}"
        self.tmpdir: str | None = None
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )  # fmt: skip

    @classmethod
    def ditf_serve(cls, export_dir: Path, log: Path, *extra: str) -> ServerProcess:
        http_port, grpc_port = free_ports(2)
        command = [
            sys.executable, "-m", "ditf_runtime.cli", "serve", str(export_dir), "--host", HOST,
            "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--threads", "1", *extra,
        ]  # fmt: skip
        # The server's temporary files (PyTriton's workspace, multiprocessing sockets) in a folder
        # of ours, removed even after a SIGKILL. Short: a unix socket path must fit in 108 bytes.
        tmp = tempfile.mkdtemp(prefix="ditf-t-")
        server = cls(command, http_port, grpc_port, log, env={**os.environ, "TMPDIR": tmp})
        server.tmpdir = tmp
        return server

    def wait_ready(self, timeout_s: float = 90.0) -> ServerProcess:
        from ditf_runtime.serving.client import FeatureClient

        deadline = time.monotonic() + timeout_s
        with closing(FeatureClient(self.url)) as client:
            while not client.is_ready():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"server did not become ready; log:\n{self.log_text()[-4000:]}")
                time.sleep(0.25)
        return self

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, as a process manager would: the server shuts Triton down and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to the server and every process it started (a crashed host).

        A killed Triton/PyTriton leaves its shared-memory segments in /dev/shm; like a process
        supervisor after a crash, remove the ones the killed processes had open or mapped.
        """
        pids = session_pids(self.process.pid)
        segments = set()
        for pid in pids:
            segments |= _shm_in_use(pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)
        self._reap()
        for segment in segments:
            Path(segment).unlink(missing_ok=True)

    def _reap(self) -> None:
        deadline = time.monotonic() + 10
        while session_pids(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in session_pids(self.process.pid):  # children that outlived a graceful stop
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def tritonserver(repo: Path, workdir: Path, log: Path) -> ServerProcess:
    """The Triton server bundled in nvidia-pytriton (python backend only), serving `repo` as is.

    Laid out the way PyTriton lays it out: the server tree copied, the python-backend stub for
    this Python placed in backends/python, the venv's bin first on PATH (the stub's embedded
    interpreter finds the venv through it) and this Python's libpython first (server.py).
    """
    from ditf_runtime.serving.server import python_backend_env
    from pytriton.triton import TRITONSERVER_DIST_DIR
    from pytriton.utils.distribution import get_libs_path, get_stub_path

    root = workdir / "tritonserver"
    shutil.copytree(TRITONSERVER_DIST_DIR, root, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy(get_stub_path(version), root / "backends" / "python" / "triton_python_backend_stub")
    env = python_backend_env()
    env["LD_LIBRARY_PATH"] += os.pathsep + str(get_libs_path())
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    http_port, grpc_port = free_ports(2)
    command = [
        str(root / "bin" / "tritonserver"), f"--model-repository={repo}", f"--backend-directory={root / 'backends'}",
        f"--http-address={HOST}", f"--http-port={http_port}", f"--grpc-address={HOST}", f"--grpc-port={grpc_port}",
        "--allow-metrics=false", "--exit-timeout-secs=5",
        f"--backend-config=python,shm-region-prefix-name=ditf{os.getpid()}-{http_port}",
    ]  # fmt: skip
    return ServerProcess(command, http_port, grpc_port, log, env=env)
