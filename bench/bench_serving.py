"""Serving overhead and Ray scaling on this machine, on one exported graph.

    python bench/bench_serving.py                      # builds and exports flux-tiny (needs torch)
    python bench/bench_serving.py --export DIR         # any export folder (torch-free)

1. In-process: `ditf_runtime.load(...).extract` one image at a time (onnxruntime, --threads).
2. Served: `ditf serve` (PyTriton's Triton, same threads) on loopback, FeatureClient over HTTP
   and gRPC with 1 and with --clients concurrent requests (dynamic batching); the overhead is
   in-process img/s divided by served img/s.
3. Ray: `extract_with_ray` over a folder of --ray-images images at long side --ray-size, with 1
   and 2 actors (1 thread each) on a local Ray with 2 CPUs, against the plain runtime at 1
   thread. Wall times include actor start and model load (what a run costs); Ray's own start is
   reported apart. (Ray Data returns results a block at a time, so no per-image rate is shown.)

All servers are on 127.0.0.1 and every loop is bounded. The machine is shared: numbers move
by 10-20 % between runs. Not part of CI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # serving_helpers: the test suite's server launcher


def flux_tiny_export(work: Path) -> Path:
    from ditf_export.export import ExportRequest, export
    from ditf_export.tiny import build_flux_tiny

    model = build_flux_tiny(work / "flux-tiny")
    out = work / "export"
    export(ExportRequest(model=str(model), out=out, layer=3, discard="7,41", ensemble=2, image_size=128,
                         text_max_length=32))  # fmt: skip
    return out


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (288, 384, 3), dtype=np.uint8) for _ in range(count)]


def timed_loop(function, items, seconds: float) -> tuple[int, float, list[float]]:
    """Call function(item) round-robin until `seconds` pass; (calls, elapsed, latencies)."""
    latencies = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        function(items[i % len(items)])
        latencies.append(time.perf_counter() - t)
        i += 1
    return i, time.perf_counter() - start, latencies


def concurrent_loop(make_call, clients: int, items, seconds: float) -> tuple[int, float, list[float]]:
    results: list = []
    lock = threading.Lock()

    def run(index):
        call = make_call()
        n, _, latencies = timed_loop(call, items[index:] + items[:index], seconds)
        with lock:
            results.append((n, latencies))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    elapsed = time.perf_counter() - start
    return sum(n for n, _ in results), elapsed, [x for _, lat in results for x in lat]


def row(name: str, calls: int, elapsed: float, latencies: list[float], baseline: float | None = None) -> list[str]:
    rate = calls / elapsed
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000) if latencies else (float("nan"),) * 2
    ratio = f"{baseline / rate:.2f}x" if baseline else "1.00x"
    return [name, f"{rate:.1f}", f"{p50:.1f}", f"{p99:.1f}", ratio]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def bench_serving(export: Path, threads: int, clients: int, seconds: float, work: Path) -> str:
    import ditf_runtime
    from ditf_runtime.serving.client import FeatureClient
    from serving_helpers import ServerProcess

    pictures = images(8)
    with ditf_runtime.load(export, threads=threads) as extractor:
        extractor.extract(pictures[0])  # warm up
        calls, elapsed, latencies = timed_loop(lambda im: extractor.extract(im), pictures, seconds)
    base = calls / elapsed
    rows = [row(f"in-process, {threads} thread(s), 1 image/call", calls, elapsed, latencies)]

    server = ServerProcess.ditf_serve(export, work / "serve.log", "--threads", str(threads)).wait_ready()
    try:
        for label, url in (("http", server.url), ("grpc", server.grpc_url)):
            with FeatureClient(url) as client:
                client.extract(pictures[0])  # warm up
                calls, elapsed, latencies = timed_loop(lambda im: client.extract(im), pictures, seconds)
            rows.append(row(f"served {label}, 1 client", calls, elapsed, latencies, base))

            def make_call(url=url):
                client = FeatureClient(url)
                return lambda im: client.extract(im)

            calls, elapsed, latencies = concurrent_loop(make_call, clients, pictures, seconds)
            rows.append(row(f"served {label}, {clients} clients (dynamic batching)", calls, elapsed, latencies, base))
    finally:
        server.stop()
    header = ["extract, 288x384 image at the export's long side", "img/s", "p50 ms", "p99 ms", "in-process / served"]
    return table(header, rows)


def bench_ray(export: Path, count: int, size: int, work: Path) -> str:
    import ditf_runtime
    import ray
    from ditf_runtime.ray_extract import extract_with_ray
    from ditf_runtime.storage import save_features

    folder = work / "ray-images"
    folder.mkdir()
    for i, picture in enumerate(images(count, seed=1)):
        Image.fromarray(picture).save(folder / f"img{i:03d}.png")
    start = time.perf_counter()
    with ditf_runtime.load(export, threads=1) as extractor:
        for path in sorted(folder.iterdir()):
            (features,) = extractor.extract(path, size=size)
            save_features(work / "plain-out" / f"{path.stem}.safetensors", features)
    plain = time.perf_counter() - start
    rows = [["plain runtime, 1 thread (load, extract, write)", f"{plain:.1f}", f"{count / plain:.1f}", "-"]]

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    try:
        one = None
        for workers in (1, 2):
            out = work / f"ray-out-{workers}"
            start = time.perf_counter()
            report = extract_with_ray([folder], export, out, size=size, workers=workers, threads=1)
            elapsed = time.perf_counter() - start
            assert report.written == count, report
            one = one or elapsed
            rows.append([f"ray, {workers} actor(s) x 1 thread", f"{elapsed:.1f}", f"{count / elapsed:.1f}",
                         f"{one / elapsed:.2f}x"])  # fmt: skip
    finally:
        ray.shutdown()
    header = [f"{count} images, long side {size}, to files", "wall s", "img/s", "speed-up vs 1 actor"]
    return table(header, rows) + f"\n(ray.init with 2 CPUs, not included above: {ray_start:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=None, help="Export folder (default: build flux-tiny).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="Per measurement.")
    parser.add_argument("--ray-images", type=int, default=96)
    parser.add_argument("--ray-size", type=int, default=384, help="Long side for the Ray runs (more work per image).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ditf-bench-serving-"))
    try:
        export = args.export or flux_tiny_export(work)
        print(bench_serving(export, args.threads, args.clients, args.seconds, work), flush=True)
        print()
        print(bench_ray(export, args.ray_images, args.ray_size, work), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
