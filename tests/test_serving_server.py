"""`ditf serve` (PyTriton's bundled Triton) on loopback: served == local, load, malformed
requests, and a server killed mid-run. Servers run as subprocesses (tests/serving_helpers.py).
"""

from __future__ import annotations

import threading
import time

import ditf_runtime
import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.cli import main
from ditf_runtime.matching import transfer_keypoints
from ditf_runtime.noise import noise_shape
from ditf_runtime.storage import load_features
from PIL import Image
from serving_helpers import ServerProcess, session_pids

pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install 'ditf-runtime[serve]')")
pytest.importorskip("tritonclient.http", reason="installed by `make setup` (ditf-runtime[serve]); absent only in a hand-made environment")
from ditf_runtime.serving.client import FeatureClient, ServerError, ServerUnavailable, extract_folder


@pytest.fixture(scope="module")
def tiny_server(export_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "tiny-serve.log"
    server = ServerProcess.ditf_serve(export_dir, log, "--max-queue-delay-us", "5000")
    with server:
        yield server
    assert server.process.returncode == 0, server.log_text()[-3000:]  # SIGTERM: a clean shutdown
    assert session_pids(server.process.pid) == []  # Triton and its python-backend stubs are gone too


def random_images(seed: int, sizes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_served_features_equal_local_features(flux_tiny_export, tmp_path):
    """The real flux-tiny export: same image and noise -> the same arrays as in-process extraction."""
    images = random_images(0, [(90, 120), (128, 72), (100, 100)])
    Image.fromarray(images[2]).save(tmp_path / "square.png")
    sources = [images[0], images[1], tmp_path / "square.png"]
    with ditf_runtime.load(flux_tiny_export, threads=1) as extractor:
        local_default = extractor.extract(sources, seed=7)
        geometry = extractor.geometry
        noise = [
            np.random.default_rng(i).standard_normal(noise_shape(geometry, 2, fm.input_size), dtype=np.float32)
            for i, fm in enumerate(local_default)
        ]
        local_noise = extractor.extract(sources, noise=noise)
        pixels = np.stack([extractor.prepare(images[0]).pixels] * 2)
        batch_noise = np.stack([noise[0], noise[0][::-1].copy()])
        local_run = extractor.run(pixels, batch_noise)

    with ServerProcess.ditf_serve(flux_tiny_export, tmp_path / "serve.log") as server:
        for url in (server.url, server.grpc_url):
            with FeatureClient(url, concurrency=1) as client:
                for served, local in ((client.extract(sources, seed=7), local_default),
                                      (client.extract(sources, noise=noise), local_noise)):  # fmt: skip
                    for s, l in zip(served, local):
                        assert (s.image_size, s.input_size, s.stride) == (l.image_size, l.input_size, l.stride)
                        np.testing.assert_array_equal(np.asarray(s), np.asarray(l), err_msg=url)
                np.testing.assert_array_equal(client.extract_pixels(pixels, noise=batch_noise), local_run)
                points = [[10, 20], [119, 89], [60, 45]]
                match = client.match(images[0], images[1], points, seed=7)
                expected, scores = transfer_keypoints(local_default[0], local_default[1], points, return_scores=True)
                np.testing.assert_array_equal(match.target_points, expected)
                np.testing.assert_allclose(match.scores, scores, rtol=1e-6)
                nn = client.match(images[0], images[1], max_matches=5, seed=7)
                assert nn.source_points.shape == nn.target_points.shape and 1 <= len(nn.scores) <= 5


MALFORMED = [
    # (inputs, what the error must say)
    ({"pixels": np.zeros((1, 3, 48, 64), np.float64)}, "data-type is 'FP64', but model 'extract' expects 'FP32'"),
    ({"image": np.zeros((1, 40, 40, 3), np.float32)}, "expects 'UINT8'"),
    ({"pixels": np.zeros((1, 48, 64), np.float32)}, "unexpected shape for input 'pixels'"),
    ({"image": np.zeros((1, 40, 40, 4), np.uint8)}, "unexpected shape for input 'image'"),
    ({"pixels": np.zeros((1, 3, 50, 70), np.float32)}, "pixels are 50x70: height and width must be positive multiples of 16"),
    ({"pixels": np.zeros((1, 3, 8, 64), np.float32)}, "pixels are 8x64"),
    ({"pixels": np.full((1, 3, 48, 64), np.nan, np.float32)}, "NaN or infinite"),
    ({"image": np.zeros((1, 40, 40, 3), np.uint8), "pixels": np.zeros((1, 3, 48, 64), np.float32)}, "exactly one of"),
    ({"seed": np.zeros((1, 1), np.int64)}, "exactly one of"),
    ({"image": np.zeros((2, 40, 40, 3), np.uint8), "seed": np.zeros((1, 1), np.int64)}, "batch size does not match other inputs"),
    ({"pixels": np.zeros((1, 3, 48, 64), np.float32), "noise": np.zeros((1, 2, 4, 5, 8), np.float32)}, "noise for row 0 has shape"),
    ({"pixels": np.zeros((1, 3, 48, 64), np.float32), "ensemble": np.full((1, 1), 10**6, np.int64)}, "ensemble must be between 1 and 64"),
    # no size limit recorded in this export: the memory budget refuses it, before the image is resized
    ({"image": np.zeros((1, 40, 40, 3), np.uint8), "size": np.full((1, 1), 100000, np.int64)}, "100000x100000, batch 1, E=2 needs about"),
]  # fmt: skip


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_malformed_requests_get_clear_errors_and_the_server_stays_up(tiny_server, export_dir, protocol):
    url = tiny_server.url if protocol == "http" else tiny_server.grpc_url
    good = random_images(1, [(40, 60)])[0]
    with ditf_runtime.load(export_dir, threads=1) as extractor:
        expected = np.asarray(extractor.extract(good)[0])
    with FeatureClient(url) as client:
        for inputs, message in MALFORMED:
            with pytest.raises(ServerError, match=None) as caught:
                client.infer("extract", inputs, ["features", "error"])
            assert message in str(caught.value), (inputs.keys(), str(caught.value))
            assert "Traceback" not in str(caught.value)
            np.testing.assert_array_equal(np.asarray(client.extract(good)[0]), expected)  # still serving
        with pytest.raises(ServerError, match="one pair per match request"):
            client.infer("match", {"source": np.zeros((2, 32, 32, 3), np.uint8),
                                   "target": np.zeros((2, 32, 32, 3), np.uint8)}, ["scores", "error"])  # fmt: skip
        with pytest.raises(ServerError, match="outside the 60x40 source image"):
            client.match(good, good, points=[[100, 100]])
        with pytest.raises(Exception, match="empty batch"):  # refused before it leaves the client
            client.infer("extract", {"pixels": np.zeros((0, 3, 48, 64), np.float32)}, ["features"])
    assert tiny_server.process.poll() is None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_official_tritonclient_gets_the_reason_in_one_line(tiny_server, protocol):
    """PyTriton wrapped a refused request's reason in two tracebacks (29 lines); now each refused request is
    answered with the reason alone, and a request at fault is an invalid argument (HTTP 400), not a server error."""
    import tritonclient.grpc
    import tritonclient.http
    from tritonclient.utils import InferenceServerException

    module = tritonclient.http if protocol == "http" else tritonclient.grpc
    url = tiny_server.url if protocol == "http" else tiny_server.grpc_url
    client = module.InferenceServerClient(url.split("://", 1)[1])
    pixels = np.full((1, 3, 48, 64), np.nan, np.float32)
    item = module.InferInput("pixels", list(pixels.shape), "FP32")
    item.set_data_from_numpy(pixels)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("extract", [item])
    text = str(caught.value)
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert text.endswith("InputError: pixels hold NaN or infinite values"), text
    assert str(caught.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT"), caught.value.status()
    client.close()


def test_ready_means_the_models_are_loaded(export_dir, tmp_path):
    """/v2/health/ready (what a load balancer or Kubernetes probes) must not answer 200 before `extract` and
    `match` are loaded: PyTriton's default start answered it with no model loaded yet."""
    import urllib.error
    import urllib.request

    def status(url):
        try:
            return urllib.request.urlopen(url, timeout=2).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:  # not listening yet
            return None

    server = ServerProcess.ditf_serve(export_dir, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 90
        while status(f"{server.url}/v2/health/ready") != 200:
            assert server.process.poll() is None and time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.02)
        assert status(f"{server.url}/v2/models/extract/ready") == 200
        assert status(f"{server.url}/v2/models/match/ready") == 200
    finally:
        server.stop()


def test_a_malformed_request_never_fails_its_batch_mates(tiny_server, export_dir):
    """Dynamic batching puts same-shape requests together: NaN pixels must fail alone."""
    good = np.random.default_rng(2).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32)
    bad = np.full_like(good, np.nan)
    outcomes = {"good": [], "bad": []}

    def send(kind, pixels):
        with FeatureClient(tiny_server.url) as client:
            for _ in range(15):
                try:
                    client.extract_pixels(pixels, seed=1)
                    outcomes[kind].append("ok")
                except ServerError as exc:
                    outcomes[kind].append(str(exc))

    threads = [threading.Thread(target=send, args=a) for a in [("good", good), ("good", good), ("bad", bad)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes["good"] == ["ok"] * 30
    assert len(outcomes["bad"]) == 15 and all("NaN or infinite" in m for m in outcomes["bad"])


def test_load_concurrent_clients(tiny_server, export_dir, capsys):
    """N clients for a bounded time on loopback; every answer checked; throughput and latency reported."""
    clients, duration_s = 4, 3.0
    images = random_images(3, [(48, 64), (64, 48), (40, 40)])
    with ditf_runtime.load(export_dir, threads=1) as extractor:
        expected = [np.asarray(fm) for fm in extractor.extract(images)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s

    def run(index):
        mine = []
        with FeatureClient(tiny_server.url if index % 2 else tiny_server.grpc_url) as client:
            i = index
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    (fm,) = client.extract(images[i % 3])
                    # batched with other clients' images: equal up to float reassociation
                    np.testing.assert_allclose(np.asarray(fm), expected[i % 3], rtol=0, atol=1e-6)
                except (ServerError, AssertionError) as exc:
                    with lock:
                        errors.append(str(exc))
                mine.append(time.perf_counter() - start)
                i += 1
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 60)
    elapsed = time.perf_counter() - started
    assert not errors, errors[:3]
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    with capsys.disabled():
        print(
            f"\n[load] {clients} clients x {duration_s:.0f} s (http+grpc, loopback): {len(latencies)} requests, "
            f"{len(latencies) / elapsed:.1f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, 0 errors"
        )
    assert len(latencies) >= clients and tiny_server.process.poll() is None


def test_killed_server_gives_a_clear_error_and_leaves_no_partial_files(export_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(random_images(4, [(60 + i % 7, 80 + i % 5) for i in range(80)])):
        Image.fromarray(image).save(images / f"img{i:03d}.png")
    out = tmp_path / "out"
    server = ServerProcess.ditf_serve(export_dir, tmp_path / "serve.log").wait_ready()
    outcome: dict = {}

    def client_run():
        with FeatureClient(server.url, concurrency=2) as client:
            try:
                outcome["report"] = extract_folder(client, [images], out, size=512)
            except ServerError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=client_run)
    thread.start()
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.safetensors"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL to `ditf serve`, Triton and its stubs
    thread.join(60)
    assert session_pids(server.process.pid) == []
    error = outcome.get("error")
    assert isinstance(error, ServerUnavailable), outcome
    assert server.url in str(error) and "unavailable" in str(error) and "were written before that" in str(error)

    written = sorted(out.glob("*.safetensors"))
    assert 5 <= len(written) < 80
    leftovers = [p.name for p in out.iterdir() if p.suffix != ".safetensors"]
    assert leftovers == []  # no temporary or half-written files
    with ditf_runtime.load(export_dir, threads=1) as extractor:
        for path in written:
            fm = load_features(path)  # every file that exists is complete and correct
            expected = extractor.extract(images / f"{path.stem}.png", size=512)[0]
            np.testing.assert_allclose(np.asarray(fm), np.asarray(expected), rtol=0, atol=1e-6)

    # A new server: the rerun does only what is missing.
    with ServerProcess.ditf_serve(export_dir, tmp_path / "serve2.log") as again:
        with FeatureClient(again.url, concurrency=2) as client:
            report = extract_folder(client, [images], out, size=512)
    assert (report.total, report.skipped, report.written, report.failed) == (80, len(written), 80 - len(written), ())
    assert again.process.returncode == 0


def test_serve_refuses_a_missing_export_clearly(tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "manifest.json not found" in result.output and "Traceback" not in result.output


def test_client_reports_an_unreachable_server(tmp_path):
    from serving_helpers import free_ports

    (port,) = free_ports(1)
    for url in (f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"):
        with FeatureClient(url, timeout_s=5) as client:
            assert not client.is_ready()
            with pytest.raises(ServerUnavailable, match="unavailable"):
                client.extract(np.zeros((32, 32, 3), np.uint8))


def test_a_healthy_start_prints_ditfs_lines_and_keeps_tritons_in_a_log(tiny_server):
    """Triton's ~55 start-up lines (tables, CUDA notes on a CPU machine) go to a file whose path is printed."""
    from pathlib import Path

    port = tiny_server.url.rsplit(":", 1)[1]
    log_file = Path(tiny_server.tmpdir) / f"ditf-triton-{port}.log"
    deadline = time.monotonic() + 30  # the server says so just after Triton reports ready
    while "serving extract" not in tiny_server.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    printed = tiny_server.log_text().splitlines()
    assert printed[0] == f"starting Triton for {tiny_server.command[4]} (its log: {log_file})", printed
    assert printed[1].startswith(f"serving extract, match on {tiny_server.url}"), printed
    assert len(printed) == 2, printed  # nothing of Triton's own
    triton_lines = log_file.read_text().splitlines()
    assert any("successfully loaded 'extract'" in line for line in triton_lines) and len(triton_lines) > 20


def _serve_command(export_dir, http_port, grpc_port):
    import sys

    return [sys.executable, "-m", "ditf_runtime.cli", "serve", str(export_dir), "--host", "127.0.0.1",
            "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--threads", "1"]


def test_a_busy_port_is_refused_at_once_naming_it(export_dir, tmp_path):
    import os
    import socket
    import subprocess

    from serving_helpers import free_ports

    http_port, grpc_port = free_ports(2)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", grpc_port))
        taken.listen()
        start = time.monotonic()
        busy = subprocess.run(_serve_command(export_dir, http_port, grpc_port), capture_output=True, text=True,
                              timeout=60, env=env)
        elapsed = time.monotonic() - start
    assert busy.returncode == 1 and elapsed < 15, (elapsed, busy.stderr)  # mostly Python's start-up
    assert f"port {grpc_port} (--grpc-port) on 127.0.0.1 is already in use" in busy.stderr, busy.stderr
    assert "Traceback" not in busy.stderr
    # Not a word about a log: the default one (per HTTP port) would be the running server's.
    assert "its log" not in busy.stderr and len(busy.stderr.strip().splitlines()) == 1, busy.stderr
    same = subprocess.run(_serve_command(export_dir, http_port, http_port), capture_output=True, text=True,
                          timeout=60, env=env)
    assert same.returncode == 1 and f"--grpc-port and --http-port are both {http_port}" in same.stderr
    assert list(tmp_path.glob("ditf-serve-*")) == []


def test_sigterm_during_startup_leaves_no_temporary_folder(export_dir, tmp_path):
    import os
    import signal
    import subprocess

    from serving_helpers import free_ports

    http_port, grpc_port = free_ports(2)
    process = subprocess.Popen(_serve_command(export_dir, http_port, grpc_port), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("ditf-serve-*")) and time.monotonic() < deadline:
            time.sleep(0.02)  # the workspace appears while Triton is being prepared and started
        assert list(tmp_path.glob("ditf-serve-*")), "the server never reached its start-up"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "interrupted while starting" in output, output
    assert "Traceback" not in output
    assert list(tmp_path.glob("ditf-serve-*")) == []
    assert session_pids(process.pid) == []  # no Triton left running either
