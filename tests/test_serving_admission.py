"""One memory budget per server (serving/admission.py): graph calls that run at once must fit it together."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ditf_runtime.manifest import Manifest
from ditf_runtime.memory import MemoryBudgetError, RunShape, estimate
from ditf_runtime.serving.admission import Admission, ServerBusyError

SIDE = 256


def _runs(manifest: Manifest, batch: int, side: int = SIDE):
    return [(manifest, RunShape(batch, manifest.feature.ensemble, side, side))]


def test_two_concurrent_large_requests_never_run_together_past_the_budget(export_dir, tmp_path, monkeypatch):
    """`ditf serve --max-memory B` where a match (two images) and an extract each fit B alone but not together:
    sent at the same moment, both are answered correctly, one after the other. Before one budget per server,
    Triton's `extract` and `match` threads each checked B alone and both ran at once."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install 'ditf-runtime[serve]')")
    pytest.importorskip("tritonclient.http", reason="installed by `make setup` (ditf-runtime[serve])")
    import ditf_runtime
    from ditf_runtime.extractor import Extractor
    from ditf_runtime.loading import LoadOptions
    from ditf_runtime.serving.client import FeatureClient
    from ditf_runtime.serving.server import FeatureServer
    from serving_helpers import free_ports

    manifest = Manifest.load(export_dir)
    one, two = (estimate(manifest, _runs(manifest, b)[0][1]) for b in (1, 2))
    budget = one.weights + two.activations + one.activations // 2  # match (batch 2) or extract, not both
    in_flight: list[int] = []
    peak = [0]
    lock = threading.Lock()
    original_run = Extractor.run

    def observed_run(self, image, noise=None):
        need = estimate(manifest, RunShape(image.shape[0], noise.shape[1], *image.shape[2:])).activations
        with lock:
            in_flight.append(need)
            peak[0] = max(peak[0], sum(in_flight))
        try:
            time.sleep(0.5)  # hold the call open: requests sent together overlap here unless admission queues them
            return original_run(self, image, noise)
        finally:
            with lock:
                in_flight.remove(need)

    rng = np.random.default_rng(0)
    source, target = (rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(2))
    with ditf_runtime.load(export_dir, threads=1) as extractor:
        expected = np.asarray(extractor.extract(source, size=SIDE)[0])
    monkeypatch.setattr(Extractor, "run", observed_run)
    http_port, grpc_port = free_ports(2)
    server = FeatureServer(export_dir, http_port=http_port, grpc_port=grpc_port, log_file=tmp_path / "triton.log",
                           load=LoadOptions(threads=1, max_memory=budget))
    results: dict[str, object] = {}
    with server:
        start = threading.Barrier(2)

        def call(kind):
            with FeatureClient(server.http_url) as client:
                start.wait()
                try:
                    if kind == "extract":
                        results[kind] = np.asarray(client.extract(source, size=SIDE)[0])
                    else:
                        results[kind] = client.match(source, target, points=[[10, 10]], size=SIDE)
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    results[kind] = exc

        threads = [threading.Thread(target=call, args=(kind,)) for kind in ("extract", "match")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    np.testing.assert_array_equal(results["extract"], expected)
    assert results["match"].target_points.shape == (1, 2), results["match"]
    assert peak[0] <= budget - one.weights, (peak[0], budget - one.weights)
    assert peak[0] >= two.activations  # the match ran (batch 2), and alone


def test_a_call_that_fits_beside_the_running_ones_starts_at_once(export_dir):
    manifest = Manifest.load(export_dir)
    one = estimate(manifest, _runs(manifest, 1)[0][1])
    admission = Admission([manifest], max_memory=one.weights + 2 * one.activations + 1, wait_s=5)
    with admission.hold(_runs(manifest, 1)):
        start = time.monotonic()
        with admission.hold(_runs(manifest, 1)):
            assert admission.reserved == 2 * one.activations
        assert time.monotonic() - start < 0.5
    assert admission.reserved == 0


def test_a_call_that_does_not_fit_beside_them_waits_then_gets_a_busy_error(export_dir):
    manifest = Manifest.load(export_dir)
    one = estimate(manifest, _runs(manifest, 1)[0][1])
    admission = Admission([manifest], max_memory=one.weights + one.activations * 3 // 2, wait_s=0.3)
    holding, release = threading.Event(), threading.Event()

    def hold_one():
        with admission.hold(_runs(manifest, 1)):
            holding.set()
            release.wait(10)

    first = threading.Thread(target=hold_one)
    first.start()
    try:
        assert holding.wait(10)
        start = time.monotonic()
        with pytest.raises(ServerBusyError, match=r"the server is busy: .* Retry later"):
            with admission.hold(_runs(manifest, 1)):
                pass
        assert 0.25 <= time.monotonic() - start < 3
        # Queued rather than refused when room comes within the wait.
        admission.wait_s = 10
        threading.Timer(0.3, release.set).start()
        with admission.hold(_runs(manifest, 1)) as need:
            assert admission.reserved == need.activations
    finally:
        release.set()
        first.join(10)


def test_a_call_that_could_never_fit_is_refused_at_once_with_a_size_that_fits(export_dir):
    manifest = Manifest.load(export_dir)
    one = estimate(manifest, _runs(manifest, 1)[0][1])
    admission = Admission([manifest], max_memory=one.weights + one.activations, wait_s=30)
    start = time.monotonic()
    with pytest.raises(MemoryBudgetError, match="--size"):
        with admission.hold(_runs(manifest, 1, side=4 * SIDE)):
            pass
    assert time.monotonic() - start < 1


def test_without_max_memory_the_calls_in_flight_count_against_the_memory_available(export_dir, monkeypatch):
    """No --max-memory: the budget is the memory available now, less what the calls in flight reserved
    (they may not have allocated it yet)."""
    manifest = Manifest.load(export_dir)
    one = estimate(manifest, _runs(manifest, 1)[0][1])
    free = [one.activations * 3 // 2]  # what the machine reports as available, whatever runs
    for module in ("ditf_runtime.serving.admission", "ditf_runtime.memory"):
        monkeypatch.setattr(f"{module}.available_memory", lambda device="cpu": free[0])
    admission = Admission([manifest], wait_s=0.2)
    with admission.hold(_runs(manifest, 1)):
        with pytest.raises(ServerBusyError):
            with admission.hold(_runs(manifest, 1)):
                pass
        free[0] = 3 * one.activations  # another process freed memory: now both fit
        with admission.hold(_runs(manifest, 1)):
            assert admission.reserved == 2 * one.activations
    free[0] = one.activations // 2  # less than one call needs, on an idle server: refused, not queued
    with pytest.raises(MemoryBudgetError):
        with admission.hold(_runs(manifest, 1)):
            pass
