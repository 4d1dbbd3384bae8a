"""The memory guard for image-only graphs (DINOv2) and fused runs (two exports at once), and the captions
of pictures made with them. The estimate itself is tested in test_runtime_memory.py."""

from __future__ import annotations

import json
from pathlib import Path

import ditf_runtime
import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.annotate import RANDOM_WEIGHTS, caption_for, file_caption
from ditf_runtime.cli import main
from ditf_runtime.manifest import Manifest, Workload
from ditf_runtime.memory import (
    ATTENTION_COPIES,
    MemoryBudgetError,
    RunShape,
    check_runs,
    ensemble_for,
    estimate,
    runs_at,
)

MIB = 1 << 20
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def exports(flux_tiny_export, dinov2_tiny_export):
    return Path(flux_tiny_export), Path(dinov2_tiny_export(False))


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_a_dinov2_export_records_an_image_only_workload(dinov2_tiny_export):
    plain, registers = Manifest.load(dinov2_tiny_export(False)), Manifest.load(dinov2_tiny_export(True))
    # dinov2-tiny: 2 heads of 16, MLP ratio 2, no VAE, no prompt; the CLS token attends with the patches
    assert plain.workload == Workload(heads=2, head_dim=16, text_tokens=0, text_attention="none", ffn_dim=64,
                                      vae_channels=(), vae_attention=False, extra_tokens=1)
    assert registers.workload.extra_tokens == 5  # CLS + 4 registers
    assert plain.random_weights and registers.random_weights  # built-in test models say so
    need = estimate(plain, RunShape(1, 1, 224, 224))  # no VAE stride in the geometry: no division by it
    tokens = (224 // 14) ** 2 + 1
    assert need.vae == 0 and need.attention == int(ATTENTION_COPIES * 2 * tokens * tokens * 4)
    assert ensemble_for(plain, 8) == 1  # no noise: one pass whatever --ensemble says


def test_a_dinov2_run_over_budget_is_refused_before_it_runs(exports, monkeypatch):
    _, dino = exports
    with ditf_runtime.load(dino, threads=1, max_memory=128 * MIB) as extractor:  # weights count 49 MiB
        ran = []
        monkeypatch.setattr(extractor.runner, "infer", lambda feed: ran.append(feed))
        with pytest.raises(MemoryBudgetError, match=r"1792x1792, batch 1, E=1 needs about .* --size \d+ fits"):
            extractor.extract([np.zeros((300, 300, 3), np.uint8)], size=1792)
        assert ran == []


def _budget_for_one_but_not_both(flux: Path, dino: Path, side: int) -> tuple[int, list]:
    runs = runs_at([Manifest.load(flux), Manifest.load(dino)], side)
    a, b = (estimate(m, shape).total for m, shape in runs)
    return max(a, b) + min(a, b) // 2, runs  # each alone fits, the two together do not


def test_a_fused_run_is_checked_as_both_graphs_together(exports, monkeypatch):
    flux, dino = exports
    budget, runs = _budget_for_one_but_not_both(flux, dino, 512)
    with ditf_runtime.load(flux, dino, threads=1, max_memory=budget, parallel=False) as fused:
        ran = []
        for member in fused.members:
            monkeypatch.setattr(member.runner, "infer", lambda feed: ran.append(feed))
        with pytest.raises(MemoryBudgetError) as refused:
            fused.extract([np.zeros((512, 512, 3), np.uint8)], size=512)
        assert ran == []  # neither graph ran
    message = str(refused.value)
    # (the test export of flux-tiny is named after its folder)
    assert "flux-tiny at 512x512, batch 1, E=2 and dinov2-tiny at 518x518, batch 1, E=1" in message
    assert "more than the --max-memory budget" in message
    fits = int(message.split("--size ")[1].split()[0])
    total = check_runs(runs_at([m for m, _ in runs], fits), max_memory=budget).total  # the advice fits
    assert fits < 512 and total <= budget


def test_fused_cli_commands_refuse_before_writing(exports, tmp_path):
    flux, dino = exports
    budget, _ = _budget_for_one_but_not_both(flux, dino, 256)
    models = ("--model", flux, "--model", dino, "--size", "256", "--max-memory", budget)
    out = tmp_path / "features"
    result = _invoke("extract", EXAMPLES, *models, "--out", out)
    assert result.exit_code == 1 and "fused run of " in result.output, result.output
    assert not out.exists()
    picture = tmp_path / "m.png"
    result = _invoke("match", EXAMPLES / "cat-a.jpg", EXAMPLES / "cat-b.jpg", *models, "--out", picture)
    assert result.exit_code == 1 and "fused run of " in result.output and not picture.exists()
    # eval-davis: a 480p frame of both models is checked before the first video is read
    result = _invoke("eval-davis", tmp_path / "no-davis-here", "--model", flux, "--model", dino, "--size", "480",
                     "--max-memory", budget)
    assert result.exit_code == 1 and "fused run of " in result.output, result.output


def test_captions_of_dinov2_and_fused_pictures(exports):
    flux, dino = (Manifest.load(p) for p in exports)
    (line,) = caption_for(dino).lines
    assert line.startswith("dinov2-tiny · layer 3 (") and "fp32 · long side 224 px" in line
    assert "t=" not in line and "E=" not in line  # no noise: no timestep, no ensemble
    fused = caption_for([flux, dino], size=256, weights=(0.4, 0.6), what="matches")
    assert fused.lines[0] == "matches"
    assert "flux-tiny · layer 3" in fused.lines[1] and "t=260 · E=2 · long side 256 px" in fused.lines[1]
    assert fused.lines[2].startswith("dinov2-tiny · layer 3") and fused.lines[2].endswith("long side 256 px")
    assert fused.lines[3] == "fused: each model's features L2-normalised, weighted 0.4 / 0.6, concatenated"
    assert fused.warning == RANDOM_WEIGHTS


def test_a_fused_feature_files_caption_names_both_models(exports, tmp_path):
    flux, dino = exports
    out = tmp_path / "features"
    result = _invoke("extract", EXAMPLES / "cat-a.jpg", "--model", flux, "--model", dino, "--size", "128", "--out", out)
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.safetensors")
    meta = ditf_runtime.storage.feature_file_metadata(path)
    caption = file_caption(meta, "PCA")
    assert caption.lines[0] == "PCA" and "flux-tiny · layer 3" in caption.lines[1]
    assert caption.lines[2].startswith("model_name dinov2-tiny") and "timestep" not in caption.lines[2]
    assert caption.lines[3] == "fused, weights [0.5, 0.5]" and caption.warning == RANDOM_WEIGHTS
    assert json.loads(meta["models"])[1]["random_weights"] is True


def test_a_fused_servers_request_is_checked_as_both_graphs_together(exports):
    """The fused server runs the two graphs on two threads: a request whose two calls would not fit together
    gets the refusal, its neighbours in the batch are served."""
    from ditf_runtime.memory import budget_check
    from ditf_runtime.serving.pipeline import FeaturePipeline, Member

    flux, dino = exports
    manifests = [Manifest.load(flux), Manifest.load(dino)]

    def together(height: int, width: int) -> int:  # requests take each export's own long side
        return check_runs(runs_at(manifests, None, image_size=(height, width)), max_memory=1 << 50).total

    budget = (together(300, 300) + together(20, 300)) // 2  # the square's two calls do not fit, the strip's do
    with ditf_runtime.load(flux, dino, threads=1, max_memory=budget) as fused:
        pipeline = FeaturePipeline.fused([Member(m.manifest, m.run) for m in fused.members], fused.weights,
                                         check_memory=budget_check(fused))
        square, strip = np.zeros((1, 300, 300, 3), np.uint8), np.zeros((1, 20, 300, 3), np.uint8)
        results = pipeline.handle("extract", [{"image": square}, {"image": strip}])
        assert isinstance(results[0], MemoryBudgetError) and "fused run of " in str(results[0])
        assert results[1]["features"].shape[:2] == (1, fused.feature_channels)
