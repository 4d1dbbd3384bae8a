"""Preprocessing: the authors' resize and scaling bit for bit, image modes, EXIF, refused files."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
from ditf_runtime.errors import ImageError, InputError
from ditf_runtime.manifest import Geometry, Preprocess
from ditf_runtime.preprocess import DEFAULT_MAX_PIXELS, model_size, open_image, prepare, to_model_array
from PIL import Image

GEOMETRY = Geometry(latent_channels=4, feature_channels=32)


def authors_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    """eval_spair.py, verbatim arithmetic."""
    scale = long_side / max(h, w)
    return int(round(h * scale / 16)) * 16, int(round(w * scale / 16)) * 16


@pytest.mark.parametrize(
    "h, w", [(375, 500), (500, 375), (333, 500), (480, 640), (1, 700), (640, 40), (640, 56), (17, 17)]
)
def test_model_size_is_the_authors_formula(h, w):
    expected = authors_size(h, w, 640)
    expected = (max(expected[0], 16), max(expected[1], 16))  # only the degenerate 1x700 case differs
    assert model_size(h, w, 640, 16) == expected


def test_model_size_uses_python_round_half_to_even():
    # 40/16 = 2.5 -> 2 (not 3); 56/16 = 3.5 -> 4
    assert model_size(40, 640, 640, 16) == (32, 640)
    assert model_size(56, 640, 640, 16) == (64, 640)


def test_pixels_match_the_authors_bit_for_bit():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (75, 101, 3), dtype=np.uint8), "RGB")
    size = model_size(75, 101, 64, 16)
    got = to_model_array(image, size, Preprocess(long_side=64))
    # PIL's default resize (bicubic), then torchvision's PILToTensor() / 255.0, - 0.5, * 2 in float32
    resized = np.asarray(image.resize((size[1], size[0])))
    expected = ((resized.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) * np.float32(2)).transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.shape == (3,) + size
    assert np.array_equal(got, expected)
    assert got.min() >= -1 and got.max() <= 1


def test_prepare_reports_sizes(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (500, 375), (10, 20, 30)).save(path)
    prepared = prepare(path, Preprocess(long_side=640), GEOMETRY)
    assert prepared.image_size == (375, 500)
    assert prepared.input_size == (480, 640)
    assert str(path) in prepared.name


def _jpeg_with_orientation(path, orientation: int) -> None:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    image.paste((10, 10, 200), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_applied_by_default_and_can_be_disabled(tmp_path):
    path = tmp_path / "rotated.jpg"
    _jpeg_with_orientation(path, 6)  # display rotated 90 degrees clockwise
    assert open_image(path).size == (20, 40)
    assert open_image(path, exif_transpose=False).size == (40, 20)
    assert prepare(path, Preprocess(long_side=64), GEOMETRY, exif_transpose=False).image_size == (20, 40)
    assert prepare(path, Preprocess(long_side=64), GEOMETRY).image_size == (40, 20)


def test_grayscale_palette_cmyk_become_rgb():
    gray = Image.new("L", (4, 3), 77)
    assert np.array_equal(np.asarray(open_image(gray)), np.full((3, 4, 3), 77, np.uint8))
    palette = Image.new("P", (4, 3))
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.putpixel((0, 0), 1)
    rgb = np.asarray(open_image(palette))
    assert tuple(rgb[0, 0]) == (10, 20, 30) and tuple(rgb[1, 1]) == (0, 0, 0)
    assert open_image(Image.new("CMYK", (4, 3), (0, 0, 0, 0))).mode == "RGB"


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgb = np.asarray(open_image(rgba))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) == (255, 0, 0)
    half = np.asarray(open_image(Image.new("LA", (1, 1), (0, 128))))
    assert tuple(half[0, 0]) == (127, 127, 127)
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert tuple(np.asarray(open_image(palette))[0, 0]) == (255, 255, 255)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # a 16-bit grayscale PNG
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(open_image(path))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.asarray(open_image(Image.fromarray(values.astype(np.int32), "I")))[0, :, 1].tolist() == [0, 1, 128, 255]


def test_float_images_in_unit_range():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(open_image(image))[0, :, 0].tolist() == [0, 128, 255]


def test_arrays_must_be_uint8_hwc():
    with pytest.raises(InputError, match="uint8 HxWx3"):
        open_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="uint8 HxWx3"):
        open_image(np.zeros((4, 4), np.uint8))
    assert open_image(np.zeros((4, 5, 3), np.uint8)).size == (5, 4)


def test_corrupt_and_truncated_files_are_refused_by_name(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="garbage.jpg"):
        open_image(garbage)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ImageError, match="truncated.jpg"):
        open_image(truncated)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png"):
        open_image(empty)
    with pytest.raises(ImageError, match="missing.png"):
        open_image(tmp_path / "missing.png")


def _png_claiming_size(path, width: int, height: int) -> None:
    """A tiny valid PNG whose header claims width x height: a decompression bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    pixels = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_before_decoding(tmp_path):
    """One limit, one message, one option: Pillow's own (higher) hard limit never shows through."""
    bomb = tmp_path / "bomb.png"
    _png_claiming_size(bomb, 100_000, 100_000)  # over Pillow's hard limit (2 x 89.5 Mpx): Pillow refuses first
    with pytest.raises(ImageError) as refused:
        open_image(bomb)
    assert str(refused.value) == (
        f"{bomb}: 10,000,000,000 pixels exceeds the limit of {DEFAULT_MAX_PIXELS:,} (possible decompression "
        "bomb); downscale it, or raise the limit with --max-pixels (max_pixels= in Python)")
    _png_claiming_size(bomb, 10_000, 10_000)  # between our limit and Pillow's: our check, same wording
    with pytest.raises(ImageError, match=f"10000x10000 = 100,000,000 pixels exceeds the limit of "
                                         f"{DEFAULT_MAX_PIXELS:,} .*--max-pixels"):
        open_image(bomb)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    _png_claiming_size(bomb, 100_000, 100_000)
    with pytest.raises(ImageError, match="not a readable image"):  # a raised limit lifts Pillow's too: decoding
        open_image(bomb, max_pixels=10**11)  # starts (and finds the file truncated)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's setting is restored


def test_tiny_images_are_warned_about(tmp_path):
    from ditf_runtime.preprocess import MIN_IMAGE_SIDE, SmallImageWarning

    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path)
    with pytest.warns(SmallImageWarning, match=r"dot.png is only 1x1 pixels: it is upscaled to 64x64"):
        prepare(path, Preprocess(long_side=64), GEOMETRY)
    Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallImageWarning)
        prepare(path, Preprocess(long_side=64), GEOMETRY)  # at the minimum: no warning


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageError, match="10,000 pixels exceeds the limit of 5,000"):
        open_image(path, max_pixels=5_000)
    with pytest.raises(ImageError, match="exceeds"):
        open_image(Image.new("RGB", (100, 100)), max_pixels=5_000)
    assert open_image(path, max_pixels=10_000).size == (100, 100)
