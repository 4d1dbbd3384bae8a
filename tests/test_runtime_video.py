"""Video exports in the runtime: Extractor.extract_video, clip noise, frame limits, track_points, `ditf track`.

One tiny Latte pipeline (tiny.build_latte_tiny, random weights) is exported once for this module. Its
features are checked against onnxruntime run directly and against the exporter's PyTorch graph on the
same frames and noise. Random tiny weights carry no notion of "the same thing moved", so tracking is
checked for direction and exactness on deterministic synthetic feature maps; on the real export only
its plumbing (shapes, frame 0, equality with transfer_keypoints, the CLI) is checked.
"""

from __future__ import annotations

import json
import zlib

import ditf_runtime
import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.cli import main
from ditf_runtime.errors import InputError
from ditf_runtime.features import FeatureMap
from ditf_runtime.manifest import REFERENCE_FILE, Manifest
from ditf_runtime.matching import track_points, transfer_keypoints
from ditf_runtime.noise import default_clip_noise
from ditf_runtime.parity import compare
from PIL import Image
from runtime_graphs import build_tiny_export

TIMESTEP = 260
LAYER = 1  # temporal_transformer_blocks.0: the frames have attended to each other
MAX_FRAMES = 4  # the tiny Latte's video_length


def _request(folder, out):
    from ditf_export.export import ExportRequest
    from ditf_export.tiny import LATTE_TINY_MASSIVE

    return ExportRequest(model=str(folder), out=out, layer=LAYER, timestep=TIMESTEP, ensemble=2, image_size=128,
                         discard=",".join(map(str, LATTE_TINY_MASSIVE)))  # fmt: skip


@pytest.fixture(scope="module")
def latte_export(tmp_path_factory, family_tiny_dir):
    from ditf_export.export import export

    out = tmp_path_factory.mktemp("latte-runtime") / "latte-l1"
    export(_request(family_tiny_dir("latte"), out))
    return out


@pytest.fixture(scope="module")
def extractor(latte_export):
    with ditf_runtime.load(latte_export, threads=1) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def torch_graph(family_tiny_dir, tmp_path_factory):
    """The exporter's PyTorch module for the same settings: the reference the export was judged by."""
    from ditf_export.export import build_graph, plan

    return build_graph(plan(_request(family_tiny_dir("latte"), tmp_path_factory.mktemp("unused") / "o"))).graph


def shifted_frames(count: int, step: int = 16, height: int = 100, width: int = 150, seed: int = 0) -> list:
    """`count` uint8 frames cut from one random image, the window moving `step` pixels right per frame."""
    world = np.random.default_rng(seed).integers(0, 256, (height, width + step * count, 3), dtype=np.uint8)
    return [np.ascontiguousarray(world[:, k * step : k * step + width]) for k in range(count)]


# -- contract and parity -----------------------------------------------------------------------


def test_video_export_contract_and_reference(extractor, latte_export):
    from safetensors.numpy import load_file

    m = Manifest.load(latte_export)
    assert m.geometry.frame_axis == 1 and extractor.is_video
    assert extractor.frame_range == (2, MAX_FRAMES)
    reference = load_file(str(latte_export / REFERENCE_FILE))
    # the exporter's parity inputs (E=3, F=max frames, 64x96), one clip: what the default engine profile holds
    assert reference["image"].shape == (1, MAX_FRAMES, 3, 64, 96)
    assert reference["noise"].shape == (1, 3, MAX_FRAMES, 4, 8, 12)
    assert reference["features"].shape == (1, MAX_FRAMES, 64, 4, 6)
    got = extractor.run(reference["image"], reference["noise"])
    assert got.shape == reference["features"].shape
    result = compare(got.reshape(-1, 64, 4, 6), reference["features"].reshape(-1, 64, 4, 6), "fp32")
    assert result, str(result)
    assert extractor.verify_reference(), "verify_reference judges video exports per frame map"


def test_extract_video_equals_onnxruntime_and_pytorch(extractor, latte_export, torch_graph):
    import onnxruntime as ort
    import torch

    frames = shifted_frames(3)
    first = extractor.prepare(frames[0])
    h8, w8 = first.input_size[0] // 8, first.input_size[1] // 8
    noise = np.random.default_rng(5).standard_normal((2, 3, 4, h8, w8), dtype=np.float32)
    maps = extractor.extract_video(frames, noise=noise)
    assert [type(fm) for fm in maps] == [FeatureMap] * 3
    assert maps[0].input_size == first.input_size == (80, 128) and maps[0].image_size == (100, 150)
    got = np.concatenate([np.asarray(fm) for fm in maps])  # [F, C, h, w]
    assert got.shape == (3, 64, 5, 8)

    pixels = np.stack([extractor.prepare(f).pixels for f in frames])[None]  # [1, F, 3, H, W]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(latte_export / "model.onnx"), options, providers=["CPUExecutionProvider"])
    direct = session.run(["features"], {"image": pixels, "noise": noise[None]})[0][0]
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-6)

    with torch.no_grad():
        reference = torch_graph(torch.from_numpy(pixels), torch.from_numpy(noise[None])).numpy()[0]
    result = compare(got, reference, "fp32")
    assert result, str(result)


def test_default_noise_is_one_draw_per_clip_keyed_by_all_frames(extractor):
    frames = shifted_frames(3, seed=1)
    pixels = np.stack([extractor.prepare(f).pixels for f in frames])
    content = zlib.crc32(pixels.tobytes())
    noise = np.random.default_rng([7, content]).standard_normal((2, 3, 4, 10, 16), dtype=np.float32)
    by_seed = extractor.extract_video(frames, seed=7)
    by_noise = extractor.extract_video(frames, noise=noise)
    for a, b in zip(by_seed, by_noise):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(default_clip_noise(pixels, extractor.geometry, 2, seed=7), noise)
    reordered = np.ascontiguousarray(pixels[[0, 2, 1]])  # the same frames in another order: another key
    assert not np.array_equal(default_clip_noise(reordered, extractor.geometry, 2, seed=7), noise)
    assert len(extractor.extract_video(frames, ensemble=1)) == 3


def test_folder_of_frames_sorted_by_name_sized_by_the_first(extractor, tmp_path):
    frames = shifted_frames(3, seed=2)
    frames[2] = np.ascontiguousarray(np.concatenate([frames[2], frames[2]], axis=1))  # 100x300: resized anyway
    folder = tmp_path / "clip"
    folder.mkdir()
    for name, frame in zip(["f10.png", "f02.png", "f05.png"], [frames[2], frames[0], frames[1]]):
        Image.fromarray(frame).save(folder / name)
    (folder / "notes.txt").write_text("not a frame")
    from_folder = extractor.extract_video(folder, seed=0)
    from_arrays = extractor.extract_video(frames, seed=0)
    assert [fm.name.rsplit("/", 1)[-1] for fm in from_folder] == ["f02.png", "f05.png", "f10.png"]
    assert [fm.input_size for fm in from_folder] == [(80, 128)] * 3
    assert [fm.image_size for fm in from_folder] == [(100, 150), (100, 150), (100, 300)]
    for a, b in zip(from_folder, from_arrays):  # PNG is lossless: the same pixels, the same features
        assert np.array_equal(np.asarray(a), np.asarray(b))


# -- refusals ------------------------------------------------------------------------------------


def test_frame_count_is_checked_against_the_manifest(extractor):
    frames = shifted_frames(MAX_FRAMES + 1)
    for clip in (frames[:1], frames):
        with pytest.raises(InputError, match=rf"got {len(clip)} frame\(s\).*clips of 2\.\.{MAX_FRAMES} frames"):
            extractor.extract_video(clip)
    with pytest.raises(InputError, match="clips of 2..4 frames"):
        extractor.run(np.zeros((1, 5, 3, 64, 64), np.float32), np.zeros((1, 1, 5, 4, 8, 8), np.float32))


def test_images_and_videos_are_not_mixed_up(extractor, tmp_path):
    with pytest.raises(InputError, match="video export.*use extract_video"):
        extractor.extract(shifted_frames(1)[0])
    with pytest.raises(InputError, match=r"must have 5 axes \[B, F, 3, H, W\]"):
        extractor.run(np.zeros((1, 3, 64, 64), np.float32), np.zeros((1, 1, 4, 8, 8), np.float32))
    build_tiny_export(tmp_path / "image-export")
    with ditf_runtime.load(tmp_path / "image-export") as image_extractor:
        assert not image_extractor.is_video and image_extractor.frame_range is None
        with pytest.raises(InputError, match="image export.*use extract"):
            image_extractor.extract_video(shifted_frames(2))


def test_wrong_clip_noise_and_empty_folders_are_refused(extractor, tmp_path):
    frames = shifted_frames(2)
    with pytest.raises(InputError, match=r"expected \[E, F=2, 4, 10, 16\]"):
        extractor.extract_video(frames, noise=np.zeros((2, 3, 4, 10, 16), np.float32))
    with pytest.raises(InputError, match="not both"):
        extractor.extract_video(frames, seed=1, noise=np.zeros((2, 2, 4, 10, 16), np.float32))
    (tmp_path / "notes.txt").write_text("not a frame")
    with pytest.raises(InputError, match="no frame images"):
        extractor.extract_video(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        extractor.extract_video(tmp_path / "missing")


# -- tracking ------------------------------------------------------------------------------------


def synthetic_clip(frames=4, grid=(8, 10), channels=32, stride=16, seed=0):
    """Deterministic maps of content moving one cell (stride px) right and one cell down per frame.

    A random world field; frame k shows the window starting k cells up-left of frame 0's, so what sat
    at pixel (x, y) in frame 0 is at (x + k*stride, y + k*stride) in frame k.
    """
    h, w = grid
    world = np.random.default_rng(seed).standard_normal((channels, h + frames, w + frames))
    maps = []
    for k in range(frames):
        top = left = frames - k
        array = world[:, top : top + h, left : left + w].astype(np.float32)
        maps.append(FeatureMap(array, (h * stride, w * stride), (h * stride, w * stride), stride))
    return maps


def test_track_points_follows_known_motion_on_synthetic_maps():
    maps = synthetic_clip()
    start = np.array([[24, 24], [56, 40], [40, 56]])
    tracks, scores = track_points(maps, start, return_scores=True)
    assert tracks.shape == (4, 3, 2) and tracks.dtype == np.int64
    expected = start[None] + 16 * np.arange(4)[:, None, None]  # right and down, 16 px per frame
    np.testing.assert_array_equal(tracks, expected)
    np.testing.assert_allclose(scores, 1.0, atol=1e-9)
    # plain arrays need the sizes; reversing the clip reverses the motion
    back = track_points([np.asarray(m) for m in maps[::-1]], expected[-1], sizes=[m.image_size for m in maps])
    np.testing.assert_array_equal(back, expected[::-1])
    with pytest.raises(InputError, match="sizes="):
        track_points([np.asarray(m) for m in maps], start)
    with pytest.raises(InputError, match="outside"):
        track_points(maps, [[500, 5]])


def test_track_points_on_exported_features_is_anchored_at_frame_zero(extractor):
    maps = extractor.extract_video(shifted_frames(MAX_FRAMES), seed=0)
    start = np.array([[20, 30], [120, 70]])
    tracks = track_points(maps, start)
    assert tracks.shape == (MAX_FRAMES, 2, 2)
    np.testing.assert_array_equal(tracks[0], start)
    for k in range(1, MAX_FRAMES):  # each frame matched to frame 0 directly, not chained
        np.testing.assert_array_equal(tracks[k], transfer_keypoints(maps[0], maps[k], start))


def test_cli_track_writes_tracks_and_a_picture(latte_export, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for k, frame in enumerate(shifted_frames(3)):
        Image.fromarray(frame).save(folder / f"frame_{k:03d}.png")
    picture, report = tmp_path / "track.png", tmp_path / "track.json"
    args = ["track", folder, "--model", latte_export, "--points", "20,30 120,70", "--out", picture,
            "--json", report, "--threads", "1"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert [p.rsplit("/", 1)[-1] for p in data["frames"]] == ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert [t["points"][0] for t in data["tracks"]] == [[20, 30], [120, 70]]
    assert all(len(t["points"]) == 3 and len(t["cosine"]) == 3 for t in data["tracks"])
    width, height = Image.open(picture).size  # a 150x100 frame, drawn enlarged to 640 wide, and a caption
    assert width == 640 and height > round(100 * 640 / 150)

    for k in range(3, MAX_FRAMES + 1):
        Image.fromarray(shifted_frames(1, seed=k)[0]).save(folder / f"frame_{k:03d}.png")
    result = CliRunner().invoke(main, [str(a) for a in args[:6]])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"got {MAX_FRAMES + 1} frame(s)" in result.output


def test_cli_track_with_two_fused_video_exports(latte_export, tmp_path):
    """Two video exports fuse frame by frame (here the same export twice, weights 0.7 / 0.3): `ditf track`
    with --model twice follows the fused maps, as the library's fused extract_video gives them."""
    from ditf_runtime.fusion import fuse_maps

    folder = tmp_path / "clip"
    folder.mkdir()
    for k, frame in enumerate(shifted_frames(3)):
        Image.fromarray(frame).save(folder / f"frame_{k:03d}.png")
    report = tmp_path / "track.json"
    args = ["track", folder, "--model", latte_export, "--model", latte_export, "--fuse-weight", "0.7",
            "--points", "20,30 120,70", "--json", report, "--threads", "1"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    with ditf_runtime.load(latte_export, latte_export, weights=(0.7, 0.3), threads=1) as fused:
        assert fused.is_video and fused.frame_range == (2, 4)
        maps = fused.extract_video(folder)
        single = fused.members[0].extract_video(folder)
    for got, one in zip(maps, single):
        np.testing.assert_array_equal(got.array, fuse_maps([one, one], (0.7, 0.3)).array)
    tracks = track_points(maps, [[20, 30], [120, 70]])
    assert [t["points"] for t in json.loads(report.read_text())["tracks"]] == tracks.transpose(1, 0, 2).tolist()
