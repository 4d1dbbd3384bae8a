"""ditf_calib.data: calibration feeds are the runtime's own preprocessing + seeded noise; bad folders fail clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ditf_calib.data import CalibrationError, check_folder, list_images, load_calibration_set
from ditf_calib.graph_io import Sizes, diffusion_io
from ditf_runtime.manifest import Geometry, Preprocess
from ditf_runtime.noise import default_noise
from ditf_runtime.preprocess import prepare

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
FLUX_TINY_IO = diffusion_io(latent_channels=16, feature_channels=64, vae_stride=8, patch_size=2)


def test_feeds_are_the_runtime_preprocessing_with_seeded_noise():
    cs = load_calibration_set(IMAGES, io=FLUX_TINY_IO, long_side=128, ensemble=2, seed=3)
    files = list_images(IMAGES)
    assert len(cs) == len(files) == 5
    geometry = Geometry(latent_channels=16, feature_channels=0)
    feeds = list(cs.feeds())
    for path, feed in zip(files, feeds):
        expected = prepare(path, Preprocess(long_side=128), geometry).pixels
        np.testing.assert_array_equal(feed["image"][0], expected)  # bit for bit: same function
        assert feed["image"].dtype == np.float32 and feed["image"].shape[0] == 1
        assert max(feed["image"].shape[2:]) == 128 and all(s % 16 == 0 for s in feed["image"].shape[2:])
        np.testing.assert_array_equal(feed["noise"][0], default_noise(expected, geometry, 2, 3))
        # the runtime's noise rule and the graph's declared shapes agree
        assert {k: v.shape for k, v in feed.items()} == {
            k: v for k, v in FLUX_TINY_IO.shapes(FLUX_TINY_IO.sizes_of(feed)).items() if k in feed}
    # reproducible, and the seed matters
    again = list(cs.feeds())
    np.testing.assert_array_equal(again[0]["noise"], feeds[0]["noise"])
    assert not np.array_equal(list(cs.feeds(seed=4))[0]["noise"], feeds[0]["noise"])


def test_several_calibration_sizes_and_listed_files():
    """--calib-sizes: every listed image at each long side, prepared exactly as the runtime prepares it."""
    files = list_images(IMAGES)[:2]
    cs = load_calibration_set(files, io=FLUX_TINY_IO, long_side=(64, 128), ensemble=2)
    assert len(cs) == 4 and [max(img.input_size) for img in cs.images] == [64, 64, 128, 128]
    geometry = Geometry(latent_channels=16, feature_channels=0)
    np.testing.assert_array_equal(cs.images[3].pixels, prepare(files[1], Preprocess(long_side=128), geometry).pixels)


def test_batched_parity_feed():
    cs = load_calibration_set(IMAGES, io=FLUX_TINY_IO, long_side=128, ensemble=2)
    feed = cs.batched((64, 96))
    assert feed["image"].shape == (5, 3, 64, 96) and feed["noise"].shape == (5, 2, 16, 8, 12)
    assert feed["image"].min() >= -1 and feed["image"].max() <= 1


def test_video_graphs_get_still_clips_with_fresh_noise_per_frame():
    """A graph with a frames axis: each photo repeated over F frames, noise drawn per clip from
    default_rng([seed, image index, F]) in the clip's declared shape."""
    io = diffusion_io(latent_channels=4, feature_channels=64, vae_stride=8, patch_size=2, max_frames=4)
    cs = load_calibration_set(IMAGES, io=io, long_side=64, ensemble=2, seed=5, max_images=2)
    assert cs.frames == 4  # default: the graph's most
    for i, (feed, img) in enumerate(zip(cs.feeds(), cs.images)):
        h, w = img.pixels.shape[1:]
        assert feed["image"].shape == (1, 4, 3, h, w) and feed["noise"].shape == (1, 2, 4, 4, h // 8, w // 8)
        assert all(np.array_equal(feed["image"][0, f], img.pixels) for f in range(4))
        expected = np.random.default_rng([5, i, 4]).standard_normal(feed["noise"].shape, dtype=np.float32)
        np.testing.assert_array_equal(feed["noise"], expected)
        assert io.sizes_of(feed) == Sizes(batch=1, height=h, width=w, ensemble=2, frames=4)
    short = load_calibration_set(IMAGES, io=io, long_side=64, ensemble=2, max_images=1, frames=2)
    assert next(short.feeds())["image"].shape[1] == 2
    with pytest.raises(CalibrationError, match="frames axis"):
        load_calibration_set(IMAGES, io=FLUX_TINY_IO, long_side=64, max_images=1, frames=2)


def test_missing_folder(tmp_path):
    with pytest.raises(CalibrationError, match="no such folder"):
        list_images(tmp_path / "nope")


def test_not_a_folder(tmp_path):
    f = tmp_path / "x.jpg"
    shutil.copy(IMAGES / "coffee.jpg", f)
    with pytest.raises(CalibrationError, match="not a folder"):
        list_images(f)


def test_empty_folder_or_no_images(tmp_path):
    with pytest.raises(CalibrationError, match="no images"):
        list_images(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    with pytest.raises(CalibrationError, match="no images"):
        list_images(tmp_path)


@pytest.mark.parametrize("content", [b"this is not a jpeg", b""], ids=["garbage", "empty-file"])
def test_corrupt_image_is_named(tmp_path, content):
    shutil.copy(IMAGES / "coffee.jpg", tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(content)
    with pytest.raises(CalibrationError, match=r"b\.jpg.*remove or replace that file"):
        check_folder(tmp_path)
    with pytest.raises(CalibrationError, match=r"b\.jpg"):
        load_calibration_set(tmp_path, io=FLUX_TINY_IO, long_side=64)


def test_truncated_image_is_refused(tmp_path):
    data = (IMAGES / "coffee.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(CalibrationError, match="cut.jpg"):
        check_folder(tmp_path)


def test_feeds_per_draw_split_the_noise_draws_bit_for_bit():
    """Calibration runs one noise draw at a time (calib/apply.py): each image's feed split along the noise's
    ensemble axis, the image repeated, every value the whole feed's."""
    cs = load_calibration_set(IMAGES, io=FLUX_TINY_IO, long_side=64, ensemble=2, seed=3)
    whole, split = list(cs.feeds()), list(cs.feeds_per_draw())
    assert len(split) == 2 * len(whole)
    for i, feed in enumerate(whole):
        for e in range(2):
            part = split[2 * i + e]
            assert part["noise"].shape == (1, 1) + feed["noise"].shape[2:]
            np.testing.assert_array_equal(part["noise"][:, 0], feed["noise"][:, e])
            np.testing.assert_array_equal(part["image"], feed["image"])
    single = load_calibration_set(IMAGES, io=FLUX_TINY_IO, long_side=64, ensemble=1, seed=3)
    assert [f["noise"].shape for f in single.feeds_per_draw()] == [f["noise"].shape for f in single.feeds()]
