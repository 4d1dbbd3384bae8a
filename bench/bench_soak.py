"""Soak: `ditf serve` on an export under N concurrent clients for a bounded time, on 127.0.0.1 only.

Half the clients use the project's client (ditf_runtime.serving.client.FeatureClient, HTTP and gRPC in turn),
half the official `tritonclient` (raw HTTP requests with the uint8 image). Every response is checked against
a local extraction of the same image (ditf_runtime.load(EXPORT).extract); the server's resident memory (the
whole process tree: ditf serve, Triton, its python-backend stubs) is read after a warm-up and at the end.

    python bench/bench_soak.py --export EXPORT_DIR --clients 4 --duration 60

EXPORT_DIR defaults to a flux-tiny export made with `ditf-export --model flux-tiny` (cached under the temp folder).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving_helpers import ServerProcess, session_pids  # noqa: E402  (loopback server in its own session)


def flux_tiny_export() -> Path:
    out = Path(tempfile.gettempdir()) / "ditf-bench-soak" / "flux-tiny"
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "ditf_export.cli", "--model", "flux-tiny", "--out", str(out), "--force"],
                       check=True)
    return out


def tree_rss_mib(pid: int) -> float:
    total = 0
    for p in session_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, default=None)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load after the warm-up")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the server")
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="seconds of the same load before the measured run (arenas grow to the batch shapes)")
    args = parser.parse_args()
    export = args.export or flux_tiny_export()

    import ditf_runtime
    import tritonclient.http as raw_http
    from ditf_runtime.serving.client import FeatureClient

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((96, 128), (128, 96), (112, 112))]
    with ditf_runtime.load(export, threads=1) as extractor:
        expected = [np.asarray(fm)[0] for fm in extractor.extract(images)]

    log = Path(tempfile.mkdtemp(prefix="ditf-soak-")) / "serve.log"
    server = ServerProcess.ditf_serve(export, log, "--max-queue-delay-us", "2000")
    server.command[server.command.index("--threads") + 1] = str(args.threads)
    stats = {"project": [], "tritonclient": []}
    failures: list[str] = []
    lock = threading.Lock()
    with server:
        deadline = 0.0
        rss_samples: list[float] = []

        def project_client(index: int) -> None:
            with FeatureClient(server.url if index % 2 else server.grpc_url) as client:
                i = index
                while time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    try:
                        (fm,) = client.extract(images[i % 3])
                        np.testing.assert_allclose(np.asarray(fm)[0], expected[i % 3], rtol=0, atol=1e-5)
                    except Exception as exc:  # noqa: BLE001 - counted and shown
                        with lock:
                            failures.append(f"project: {type(exc).__name__}: {str(exc)[:200]}")
                    with lock:
                        stats["project"].append(time.perf_counter() - t0)
                    i += 1

        def triton_client(index: int) -> None:
            client = raw_http.InferenceServerClient(server.url.split("://", 1)[1])
            i = index
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    item = raw_http.InferInput("image", [1, *images[i % 3].shape], "UINT8")
                    item.set_data_from_numpy(images[i % 3][None], binary_data=True)
                    result = client.infer("extract", [item], outputs=[
                        raw_http.InferRequestedOutput("features", binary_data=True),
                        raw_http.InferRequestedOutput("error", binary_data=True)])
                    assert not result.as_numpy("error")[0][0], result.as_numpy("error")
                    np.testing.assert_allclose(result.as_numpy("features")[0], expected[i % 3], rtol=0, atol=1e-5)
                except Exception as exc:  # noqa: BLE001 - counted and shown
                    with lock:
                        failures.append(f"tritonclient: {type(exc).__name__}: {str(exc)[:200]}")
                with lock:
                    stats["tritonclient"].append(time.perf_counter() - t0)
                i += 1
            client.close()

        def load(seconds: float) -> float:
            nonlocal deadline
            deadline = time.monotonic() + seconds
            threads = [threading.Thread(target=project_client if k % 2 == 0 else triton_client, args=(k,))
                       for k in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                time.sleep(min(5.0, max(seconds / 4, 0.5)))
                rss_samples.append(tree_rss_mib(server.process.pid))
            return time.perf_counter() - started

        load(args.warmup)  # the same load: sessions, arenas and Triton grow to the batch shapes it makes
        warm_failures = len(failures)
        for latencies in stats.values():
            latencies.clear()
        rss_samples.clear()
        rss_start = tree_rss_mib(server.process.pid)
        elapsed = load(args.duration)
        rss_end = tree_rss_mib(server.process.pid)
    assert server.process.returncode == 0, server.log_text()[-2000:]

    print(f"\nditf serve {export.name} on 127.0.0.1, {args.clients} clients x {args.duration:.0f} s, "
          f"server threads {args.threads}, {os.cpu_count()} cores")
    print("| client | requests | req/s | p50 ms | p99 ms | failed or wrong |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    everything = []
    for kind, latencies in stats.items():
        if not latencies:
            continue
        everything += latencies
        bad = sum(f.startswith(kind) for f in failures)
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        print(f"| {kind} | {len(latencies)} | {len(latencies) / elapsed:.1f} | {p50:.1f} | {p99:.1f} | {bad} |")
    p50, p99 = np.percentile(everything, [50, 99]) * 1000
    print(f"| all | {len(everything)} | {len(everything) / elapsed:.1f} | {p50:.1f} | {p99:.1f} | {len(failures)} |")
    print(f"server resident memory (process tree): {rss_start:.0f} MiB after {args.warmup:.0f} s of warm-up, "
          f"{rss_end:.0f} MiB at the end ({rss_end - rss_start:+.0f} MiB; largest sample {max(rss_samples):.0f} MiB)")
    if warm_failures:
        print(f"  ({warm_failures} failure(s) during the warm-up, counted below)")
    for failure in failures[:5]:
        print("  failure:", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
