"""The memory guard knows which graph runs: the CPU variant's fused attention (cpu_variant.attention_bytes,
linear in the tokens) against model.onnx's dense [heads, N, N] scores. Budgets (--max-memory) make the
refusals deterministic; nothing here runs at 2048 px (the suite stays fast): the allowance at 2048 is
checked before the backend, one real run is small. The estimate's constants are calibrated by
bench/bench_memory.py, not here."""

from __future__ import annotations

import dataclasses

import ditf_runtime
import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.cli import main
from ditf_runtime.cpu_variant import attention_bytes
from ditf_runtime.manifest import FEATURES_OUTPUT, Manifest
from ditf_runtime.memory import (
    FUSED_ATTENTION_COPIES,
    MemoryBudgetError,
    RunShape,
    budget_check,
    check,
    check_long_side,
    estimate,
    fused_attention_of,
    largest_fitting_side,
    runs_at,
)

GIB = 1 << 30
HINT = "`ditf optimize-cpu EXPORT` makes a CPU variant whose attention memory grows linearly"


@pytest.fixture(scope="module")
def manifest(flux_tiny_export) -> Manifest:
    return Manifest.load(flux_tiny_export)


def _between(manifest: Manifest, shape: RunShape) -> int:
    """A budget the fused graph fits at `shape` and the dense one does not (the geometric mean of the two)."""
    fused = estimate(manifest, dataclasses.replace(shape, fused_attention=True)).total
    dense = estimate(manifest, shape).total
    assert fused < dense
    return int((fused * dense) ** 0.5)


def test_the_fused_estimate_grows_with_the_pixels_not_their_square(manifest):
    dense = estimate(manifest, RunShape(1, 2, 2048, 2048))
    fused = estimate(manifest, RunShape(1, 2, 2048, 2048, fused_attention=True))
    # bench/bench_attention_memory.py measured 1.52 GB peak for the variant, model.onnx over a 20 GiB cap
    assert dense.total > 30 * GIB and fused.total < 3 * GIB
    assert fused.weights == dense.weights and fused.stream == dense.stream  # only the attention terms differ
    # doubling the side: ~4x the fused activations (pixels), ~16x the dense attention (their square)
    half = estimate(manifest, RunShape(1, 2, 1024, 1024, fused_attention=True))
    assert 3 < fused.activations / half.activations < 4.5
    assert estimate(manifest, RunShape(1, 2, 1024, 1024)).attention * 14 < dense.attention
    # the transformer term is cpu_variant.attention_bytes (the one place that knows the fused kernel's memory):
    # flux-tiny attends 4 heads of 16 jointly over image + 32 prompt tokens, E=2 sequences
    tokens = (2048 // 16) ** 2 + 32
    per_call = attention_bytes(2, 4, tokens, tokens, 16, fused=True, threads=1)
    assert FUSED_ATTENTION_COPIES * per_call <= fused.attention < FUSED_ATTENTION_COPIES * per_call * 1.1


def test_the_extractor_estimates_the_graph_it_runs(flux_tiny_cpu_variant, monkeypatch):
    """At 2048x2048 under a 4 GiB budget: the variant's run reaches the backend, model.onnx's is refused
    before it does, with the hint that the variant would fit."""
    budget = 4 * GIB
    image = np.zeros((1, 3, 2048, 2048), np.float32)
    noise = np.zeros((1, 2, 16, 256, 256), np.float32)
    reached = []

    def infer(feed):  # the backend itself is not run at this size (seconds and 1.5 GB): the guard is the test
        reached.append(feed[list(feed)[0]].shape)
        return {FEATURES_OUTPUT: np.zeros((1, 64, 128, 128), np.float32)}

    with ditf_runtime.load(flux_tiny_cpu_variant, threads=1, max_memory=budget) as variant:
        assert variant.graph.variant and fused_attention_of(variant) == (True,)
        monkeypatch.setattr(variant.runner, "infer", infer)
        assert variant.run(image, noise).shape == (1, 64, 128, 128)
    assert reached == [(1, 3, 2048, 2048)]
    with ditf_runtime.load(flux_tiny_cpu_variant, threads=1, max_memory=budget, cpu_variant="off") as dense:
        assert fused_attention_of(dense) == (False,)
        monkeypatch.setattr(dense.runner, "infer", infer)
        with pytest.raises(MemoryBudgetError) as refused:
            dense.run(image, noise)
    assert reached == [(1, 3, 2048, 2048)]  # the dense run never reached the backend
    message = str(refused.value)
    assert "2048x2048, batch 1, E=2 needs about" in message and "--size" in message
    assert HINT in message and "(it would need about 1." in message  # what the variant would need: ~1.x GiB


def test_a_real_run_of_the_variant_under_a_budget_model_onnx_is_refused(flux_tiny_cpu_variant, manifest):
    shape = RunShape(1, 2, 768, 768)
    budget = _between(manifest, shape)
    photo = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)  # 768 long side: 576x768
    with ditf_runtime.load(flux_tiny_cpu_variant, threads=2, max_memory=budget) as variant:
        (fm,) = variant.extract([photo], size=768)
    assert fm.input_size == (576, 768) and np.isfinite(np.asarray(fm)).all()
    with ditf_runtime.load(flux_tiny_cpu_variant, threads=2, max_memory=budget, cpu_variant="off") as dense:
        with pytest.raises(MemoryBudgetError, match="576x768, batch 1, E=2 needs about"):
            dense.extract([photo], size=768)


def test_the_hint_only_where_the_variant_would_fit(manifest):
    big = RunShape(1, 2, 2048, 2048)
    with pytest.raises(MemoryBudgetError) as tight:  # not even the variant fits 1 GiB at 2048: no hint
        check(manifest, big, max_memory=GIB)
    assert HINT not in str(tight.value)
    with pytest.raises(MemoryBudgetError) as gpu:  # the variant is for the CPU provider
        check(manifest, big, max_memory=4 * GIB, device="cuda")
    assert HINT not in str(gpu.value)
    with pytest.raises(MemoryBudgetError) as fused:  # already fused: nothing to suggest
        check(manifest, dataclasses.replace(big, fused_attention=True), max_memory=GIB)
    assert HINT not in str(fused.value)
    # the size it advises is the variant's own: larger than the dense graph's at the same budget
    fused_side = largest_fitting_side([(manifest, dataclasses.replace(big, fused_attention=True))], GIB, True)
    assert fused_side > largest_fitting_side([(manifest, big)], GIB, True)
    assert f"--size {fused_side} fits" in str(fused.value)


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_cli_up_front_checks_use_the_graph_that_will_run(flux_tiny_cpu_variant, spair_pair_without_images):
    """eval-spair checks its largest input (a square at --size) before the first pair: 2048 within 4G passes for
    the variant (then the pair's missing images stop it), and is refused for model.onnx."""
    root = spair_pair_without_images
    args = ("eval-spair", root, "--model", flux_tiny_cpu_variant, "--size", "2048", "--max-memory", "4G")
    variant = _invoke(*args)
    assert variant.exit_code == 1 and "needs about" not in variant.output and "a.jpg" in variant.output, \
        variant.output
    dense = _invoke(*args, "--cpu-variant", "off")
    assert dense.exit_code == 1 and "2048x2048, batch 1, E=2 needs about" in dense.output and HINT in dense.output


def test_the_ray_driver_checks_the_graph_its_workers_will_open(flux_tiny_cpu_variant):
    from ditf_runtime.loading import LoadOptions

    manifest, graph = LoadOptions(max_memory=4 * GIB).check(flux_tiny_cpu_variant)
    assert graph.variant and graph.fused_attention
    assert not LoadOptions(cpu_variant="off").check(flux_tiny_cpu_variant)[1].fused_attention
    check_long_side(manifest, 2048, fused_attention=[graph.fused_attention], max_memory=4 * GIB)  # fits
    with pytest.raises(MemoryBudgetError):
        check_long_side(manifest, 2048, fused_attention=[False], max_memory=4 * GIB)


def _pair_needs(manifest: Manifest, side: int | None) -> tuple[int, int]:
    """The estimates of a variant + model.onnx pair and of two model.onnx graphs at `side`."""
    return tuple(sum(estimate(m, s).total for m, s in runs_at([manifest, manifest], side, fused_attention=graphs))
                 for graphs in ([True, False], [False, False]))


def test_a_fused_run_estimates_each_members_own_graph(flux_tiny_cpu_variant, flux_tiny_export, monkeypatch):
    """The variant fused with model.onnx at 1024 px: the budget fits that pair, not the same two folders with
    both graphs dense (cpu_variant="off"); checked together before either graph runs."""
    mixed, dense = _pair_needs(Manifest.load(flux_tiny_export), 1024)
    assert mixed < dense / 1.5
    budget = (mixed + dense) // 2
    image = np.zeros((1, 3, 1024, 1024), np.float32)
    noise = np.zeros((1, 2, 16, 128, 128), np.float32)
    features = {FEATURES_OUTPUT: np.zeros((1, 64, 64, 64), np.float32)}
    for choice, fits in (("auto", True), ("off", False)):
        with ditf_runtime.load(flux_tiny_cpu_variant, flux_tiny_export, threads=1, max_memory=budget,
                               parallel=False, cpu_variant=choice) as fused:
            assert fused_attention_of(fused) == (fits, False)
            ran = []
            for member in fused.members:  # the graphs themselves are not run at this size
                monkeypatch.setattr(member.runner, "infer", lambda feed: ran.append(1) or features)
            if fits:
                assert fused.run([image, image], [noise, noise]).shape[:2] == (1, 128)
            else:
                with pytest.raises(MemoryBudgetError, match="fused run of "):
                    fused.run([image, image], [noise, noise])
            assert len(ran) == (2 if fits else 0)


def test_a_fused_servers_members_carry_their_graphs(flux_tiny_cpu_variant, flux_tiny_export):
    """The fused server (serving/server.py, triton_model.py build their members so) checks each request's two
    calls with each member's own graph; a member without one counts as dense. Fused requests take each
    export's own long side (128 px here), where the two estimates differ by a few hundred KB (either way:
    the flash kernel's tiles are as large as such small score matrices): the budget lies between them."""
    from ditf_runtime.serving.pipeline import FeaturePipeline, Member

    mixed, dense = _pair_needs(Manifest.load(flux_tiny_export), None)
    assert mixed != dense
    budget = (mixed + dense) // 2
    request = {"image": np.zeros((1, 128, 128, 3), np.uint8)}  # a square at the long side, as runs_at sizes it
    with ditf_runtime.load(flux_tiny_cpu_variant, flux_tiny_export, threads=1, max_memory=budget) as fused:
        for members, need in (([Member(m.manifest, m.run, graph=m.graph) for m in fused.members], mixed),
                              ([Member(m.manifest, m.run) for m in fused.members], dense)):
            result = FeaturePipeline.fused(members, fused.weights, check_memory=budget_check(fused)).handle(
                "extract", [request])[0]
            if need <= budget:
                assert result["features"].shape == (1, 128, 8, 8)
            else:
                assert isinstance(result, MemoryBudgetError) and "fused run of " in str(result)
