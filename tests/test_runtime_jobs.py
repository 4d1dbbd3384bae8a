"""jobs.py, the batch extraction that `ditf extract`, Ray and the serving client share."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from ditf_runtime import load
from ditf_runtime.errors import ImageError, InputError
from ditf_runtime.jobs import (
    DONE,
    FAILED,
    FILE_FIELDS,
    RUN_RECORD,
    ExtractSettings,
    collect_jobs,
    extract_chunk,
    extract_jobs,
    plan_folder,
    start_folder,
)
from ditf_runtime.storage import load_features
from PIL import Image


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, (h, w) in {"a.png": (40, 56), "b.png": (40, 56), "nested/c.png": (33, 47)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_collect_jobs_keeps_the_folder_structure_and_refuses_collisions(images, tmp_path):
    out = tmp_path / "out"
    jobs = collect_jobs([images, images / "a.png"], out, ".npy")
    assert [(j.image.relative_to(images).as_posix(), j.output.relative_to(out).as_posix()) for j in jobs] == [
        ("a.png", "a.npy"),
        ("b.png", "b.npy"),
        ("nested/c.png", "nested/c.npy"),
    ]
    Image.new("RGB", (20, 20)).save(images / "a.jpg")
    with pytest.raises(InputError, match="would both write"):
        collect_jobs([images], out, ".npy")
    with pytest.raises(InputError, match="no such file or folder"):
        collect_jobs([tmp_path / "missing"], out, ".npy")


def test_plan_folder_skips_finished_outputs_and_guards_the_run_record(export_dir, images, tmp_path):
    out = tmp_path / "out"
    settings = ExtractSettings(seed=3)
    plan = plan_folder([images], export_dir, out, settings)
    assert (len(plan.jobs), plan.done, len(plan.pending)) == (3, 0, 3)
    record = json.loads((out / RUN_RECORD).read_text())
    # a hand-built graph without random_weights in its manifest: its files carry every other field
    assert record == plan.record and record["seed"] == 3 and set(plan.metadata) == set(FILE_FIELDS) - {"random_weights", "trained_on"}
    plan.pending[0].output.write_bytes(b"a finished output")  # existence is what counts (atomic writes)
    again = plan_folder([images], export_dir, out, settings)
    assert (again.done, len(again.pending)) == (1, 2)
    with pytest.raises(InputError, match="differs in seed"):
        plan_folder([images], export_dir, out, ExtractSettings(seed=4))
    assert len(plan_folder([images], export_dir, out, ExtractSettings(seed=4, overwrite=True)).pending) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        plan_folder([tmp_path / "empty"], export_dir, out, settings)
    # start=False: checked, nothing written yet (the CLI loads the model first); start_folder writes it
    later = tmp_path / "later"
    planned = plan_folder([images], export_dir, later, settings, start=False)
    assert len(planned.pending) == 3 and not later.exists()
    start_folder(planned)
    assert json.loads((later / RUN_RECORD).read_text()) == planned.record


def test_a_bad_image_spoils_only_itself(export_dir, images, tmp_path):
    (images / "broken.png").write_bytes(b"not a png")
    settings = ExtractSettings()
    plan = plan_folder([images], export_dir, tmp_path / "out", settings)
    chunk = sorted(plan.pending, key=lambda job: job.image.name)  # a, b, broken, c: one batch of four
    with load(export_dir, batch_size=4) as extractor:
        outcomes = extract_chunk(partial(settings.extract, extractor), chunk, "safetensors", plan.metadata)
    assert [(job.image.name, status) for job, status, _ in outcomes] == [
        ("a.png", DONE),
        ("b.png", DONE),
        ("broken.png", FAILED),
        ("c.png", DONE),
    ]
    assert "broken.png" in outcomes[2][2]
    assert not chunk[2].output.exists()
    written = load_features(chunk[0].output)
    assert written.name == str(chunk[0].image)  # the source image, in the file's metadata
    with load(export_dir) as extractor:  # the same image alone: what the batch-of-four run wrote
        (alone,) = settings.extract(extractor, [chunk[0].image])
    np.testing.assert_array_equal(np.asarray(written), np.asarray(alone))


def test_extract_jobs_reports_progress_and_stops_on_other_errors(export_dir, images, tmp_path):
    plan = plan_folder([images], export_dir, tmp_path / "out", ExtractSettings())
    seen = []
    with load(export_dir, batch_size=2) as extractor:
        written, failures = extract_jobs(
            extractor, plan.pending, ExtractSettings(), plan.metadata, lambda *event: seen.append(event)
        )
        assert (written, failures) == (3, [])
        assert sorted(seen) == sorted((str(job.output), DONE, "") for job in plan.pending)
        # Not an unreadable image but a bad setting: the run stops instead of failing every image.
        with pytest.raises(InputError, match="smaller than the model's size multiple") as error:
            extract_jobs(extractor, plan.pending, ExtractSettings(size=8, overwrite=True), plan.metadata)
        assert not isinstance(error.value, ImageError)
