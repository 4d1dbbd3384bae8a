"""ditf_calib.graph_io: a graph's tensors declared once; every shape (tracing, manifest I/O specs, TensorRT
profiles, calibration feeds, parity inputs) comes from `GraphIO.shapes`.

The diffusion graphs must give exactly the shapes and manifest strings the exporter always wrote; a graph
with only an image input and another stride (the coming DINOv2 family's kind) must go through the same
generic code with no special case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ditf_calib.graph_io import IMAGE, Axis, GraphIO, Sizes, TensorIO, diffusion_io
from ditf_runtime.manifest import Geometry
from ditf_runtime.noise import clip_noise_shape, noise_shape

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
FLUX_LIKE = diffusion_io(latent_channels=16, feature_channels=3072, vae_stride=8, patch_size=2)
VIDEO = diffusion_io(latent_channels=4, feature_channels=1152, vae_stride=8, patch_size=2, max_frames=16)


def image_only_io(stride: int = 14, channels: int = 384) -> GraphIO:
    """A graph with a single image input and its own stride (a DINOv2-like declaration)."""
    b, h, w = Axis("batch"), Axis("height"), Axis("width")
    return GraphIO(inputs=(TensorIO("image", (b, 3, h, w), role=IMAGE),),
                   outputs=(TensorIO("features", (b, channels, Axis("height", stride), Axis("width", stride))),),
                   geometry=Geometry(latent_channels=0, feature_channels=channels, vae_stride=1,
                                     feature_stride=stride, size_multiple=stride))


def test_diffusion_shapes_and_manifest_strings():
    sizes = Sizes(batch=2, ensemble=3, height=64, width=96)
    assert FLUX_LIKE.shapes(sizes) == {"image": (2, 3, 64, 96), "noise": (2, 3, 16, 8, 12),
                                       "features": (2, 3072, 4, 6)}
    specs = {t.name: t.spec().shape for t in FLUX_LIKE.inputs + FLUX_LIKE.outputs}
    assert specs == {"image": ("batch", 3, "height", "width"),
                     "noise": ("batch", "ensemble", 16, "height/8", "width/8"),
                     "features": ("batch", 3072, "height/16", "width/16")}
    g = FLUX_LIKE.geometry
    assert (g.vae_stride, g.feature_stride, g.size_multiple, g.frame_axis) == (8, 16, 16, None)
    # the runtime's own noise rule (what deployment and calibration draw) agrees with the declaration
    assert FLUX_LIKE.shapes(sizes)["noise"][1:] == noise_shape(g, 3, (64, 96))


def test_video_axes_sit_after_batch_and_after_ensemble():
    sizes = Sizes(batch=1, ensemble=2, height=48, width=80, frames=5)
    shapes = VIDEO.shapes(sizes)
    assert shapes == {"image": (1, 5, 3, 48, 80), "noise": (1, 2, 5, 4, 6, 10), "features": (1, 5, 1152, 3, 5)}
    assert shapes["noise"][1:] == clip_noise_shape(VIDEO.geometry, 2, 5, (48, 80))
    assert VIDEO.geometry.frame_axis == 1 and VIDEO.max_frames == 16
    with pytest.raises(ValueError, match="frames"):
        VIDEO.shapes(Sizes(batch=1, ensemble=2, height=48, width=80))  # a frames axis needs a frame count


def test_sizes_round_trip_and_bad_sizes():
    sizes = Sizes(batch=2, ensemble=3, height=112, width=80)
    feed = FLUX_LIKE.random_inputs(sizes, seed=0)
    assert FLUX_LIKE.sizes_of(feed) == sizes
    with pytest.raises(ValueError, match="disagrees"):
        FLUX_LIKE.sizes_of({"image": feed["image"], "noise": feed["noise"][:, :, :, :7]})
    with pytest.raises(ValueError, match="not a multiple of 16"):
        FLUX_LIKE.shapes(Sizes(batch=1, ensemble=1, height=72, width=96))
    with pytest.raises(ValueError, match="does not divide"):
        GraphIO(inputs=(TensorIO("x", (Axis("height", 32),), role=IMAGE),), outputs=(),
                geometry=Geometry(latent_channels=0, feature_channels=1, size_multiple=16))


def test_random_inputs_are_the_former_parity_draws():
    """Image then noise from one default_rng(seed): the same arrays parity and its saved reference always used."""
    feed = FLUX_LIKE.random_inputs(Sizes(batch=2, ensemble=3, height=64, width=96), seed=1000)
    rng = np.random.default_rng(1000)
    image = rng.uniform(-1, 1, size=(2, 3, 64, 96)).astype(np.float32)
    noise = rng.standard_normal((2, 3, 16, 8, 12)).astype(np.float32)
    np.testing.assert_array_equal(feed["image"], image)
    np.testing.assert_array_equal(feed["noise"], noise)


def test_a_graph_with_only_an_image_input_goes_through_the_generic_code():
    """No noise, stride 14: tracing axes, parity sizes, TensorRT profiles, random and calibration feeds all
    follow the declaration."""
    from ditf_calib.data import load_calibration_set
    from ditf_export.onnx_export import dynamic_shapes, trace_sizes
    from ditf_export.publish import trt_profiles

    io = image_only_io()
    sizes = Sizes(batch=2, height=56, width=84)
    assert io.shapes(sizes) == {"image": (2, 3, 56, 84), "features": (2, 384, 4, 6)}
    assert set(io.random_inputs(sizes, seed=0)) == {"image"}
    assert trace_sizes(io) == Sizes(batch=2, ensemble=2, height=56, width=84)
    dims = dynamic_shapes(io)
    assert set(dims) == {"image"} and sorted(dims["image"]) == [0, 2, 3]
    assert dims["image"][2].__name__ == "14*height_14"
    profiles = trt_profiles(io, image_size=518, ensemble=1)
    assert profiles == {"min": {"image": [1, 3, 266, 266]}, "opt": {"image": [1, 3, 518, 518]},
                        "max": {"image": [4, 3, 1022, 1022]}}
    calib = load_calibration_set(IMAGES, io=io, long_side=140, max_images=2)
    for feed in calib.feeds():
        assert set(feed) == {"image"} and all(s % 14 == 0 for s in feed["image"].shape[2:])


def test_the_exporters_dynamic_axes_for_the_diffusion_graphs():
    """What torch.export is told: image H = 16 * height_16, noise H/8 = 2 * height_16 (video: frames from 2)."""
    from ditf_export.onnx_export import dynamic_shapes

    dims = {name: {i: d.__name__ for i, d in axes.items()} for name, axes in dynamic_shapes(FLUX_LIKE).items()}
    assert dims == {"image": {0: "batch", 2: "16*height_16", 3: "16*width_16"},
                    "noise": {0: "batch", 1: "ensemble", 3: "2*height_16", 4: "2*width_16"}}
    video = dynamic_shapes(VIDEO)
    assert video["image"][1].__name__ == "frames" and video["noise"][2] is video["image"][1]
    assert video["image"][1].min == 2 and video["image"][1].max == 16
