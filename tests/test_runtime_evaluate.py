"""PCK on a small synthetic dataset in SPair-71k's layout whose answer is known."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from ditf_runtime import evaluate
from ditf_runtime.errors import InputError
from ditf_runtime.evaluate import pck, read_pairs
from PIL import Image

GRID = (6, 8)  # feature cells (h, w)
SIZE = (96, 128)  # image (h, w)
FAR = 1000  # an annotation this far off is never correct


class LookupExtractor:
    """Deterministic stand-in: features registered per image content (crc32 of the decoded pixels).

    A target registered as the source's features flipped left-right must map (x, y) to
    (W - 1 - x, y); any EXIF rotation applied on the way would change the pixels and miss the lookup.
    """

    def __init__(self):
        self.features: dict[int, np.ndarray] = {}
        self.calls = 0

    def register(self, pixels: np.ndarray, features: np.ndarray) -> None:
        self.features[zlib.crc32(np.ascontiguousarray(pixels).tobytes())] = features

    def extract(self, images, **options):
        self.calls += len(images)
        return [self.features[zlib.crc32(np.ascontiguousarray(image).tobytes())] for image in images]


def _save_jpeg(path, pixels, orientation=None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": 90}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    Image.fromarray(pixels).save(path, **kwargs)
    return np.asarray(Image.open(path).convert("RGB"))  # what a reader decodes


def _pair_json(folder, name, category, src, trg, src_kps, trg_kps, bbox):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}:{category}.json").write_text(
        json.dumps(
            {
                "src_imname": src,
                "trg_imname": trg,
                "category": category,
                "src_kps": src_kps,
                "trg_kps": trg_kps,
                "trg_bndbox": bbox,
                "src_imsize": [SIZE[1], SIZE[0], 3],
                "trg_imsize": [SIZE[1], SIZE[0], 3],
            }
        )
    )


def _away_from_borders(rng, count):
    # Inside the border band, bilinear upsampling repeats vectors (ties); keep points clear of it.
    return [[int(rng.integers(12, SIZE[1] - 12)), int(rng.integers(12, SIZE[0] - 12))] for _ in range(count)]


@pytest.fixture()
def dataset(tmp_path):
    """cat: 2 pairs (4/4 and 2/4 correct), dog: 1 pair (0/2 correct). Targets are flipped sources."""
    rng = np.random.default_rng(0)
    extractor = LookupExtractor()
    annotations = tmp_path / "PairAnnotation" / "test"
    width = SIZE[1]
    bbox = [10, 10, 110, 60]  # max(h, w) = 100 -> threshold 10 px
    plan = {"cat": [(4, 4), (4, 2)], "dog": [(2, 0)]}
    for category, pairs in plan.items():
        for index, (count, correct) in enumerate(pairs):
            src_name, trg_name = f"{category}{index}_src.jpg", f"{category}{index}_trg.jpg"
            pixels = rng.integers(0, 256, SIZE + (3,), dtype=np.uint8)
            src_pixels = _save_jpeg(tmp_path / "JPEGImages" / category / src_name, pixels)
            # the target carries an EXIF rotation that evaluation must NOT apply
            trg_pixels = _save_jpeg(tmp_path / "JPEGImages" / category / trg_name, pixels[:, ::-1], orientation=3)
            features = rng.standard_normal((1, 16) + GRID).astype(np.float32)
            extractor.register(src_pixels, features)
            extractor.register(trg_pixels, features[..., ::-1].copy())
            src_kps = _away_from_borders(rng, count)
            truth = [[width - 1 - x, y] for x, y in src_kps]
            trg_kps = [p if k < correct else [p[0], p[1] + FAR] for k, p in enumerate(truth)]
            _pair_json(
                annotations, f"{index:06d}-{src_name}-{trg_name}", category, src_name, trg_name, src_kps, trg_kps, bbox
            )
    return tmp_path, extractor


def test_pck_known_answer(dataset):
    root, extractor = dataset
    result = evaluate(extractor, root)
    assert result
    assert result.pairs == 3 and result.points == 10
    assert result.categories["cat"].per_image == pytest.approx(0.75)
    assert result.categories["cat"].per_point == pytest.approx(6 / 8)
    assert result.categories["dog"].per_image == 0.0
    assert result.all_per_image == pytest.approx((1 + 0.5 + 0) / 3)
    assert result.all_per_point == pytest.approx(6 / 10)
    assert result.mean_per_image == pytest.approx((0.75 + 0) / 2)
    assert result.mean_per_point == pytest.approx((0.75 + 0) / 2)
    assert extractor.calls == 6  # each image once
    table = result.table()
    assert "All" in table and "Mean" in table and "75.00" in table
    assert result.to_dict()["image"]["Mean"] == pytest.approx(0.375)


def test_min_pck_decides_truthiness(dataset):
    root, extractor = dataset
    assert not evaluate(extractor, root, min_pck=0.9)
    assert evaluate(extractor, root, min_pck=0.5)


def test_category_filter_and_limit(dataset):
    root, extractor = dataset
    assert evaluate(extractor, root, categories=["dog"]).pairs == 1
    assert evaluate(extractor, root, limit=1).pairs == 2
    with pytest.raises(InputError, match="horse"):
        evaluate(extractor, root, categories=["horse"])


def test_threshold_is_inclusive():
    truth = np.array([[100, 100], [100, 100], [100, 100]])
    predicted = np.array([[110, 100], [111, 100], [106, 108]])  # 10 (edge), 11, 10 (6-8-10)
    assert pck(predicted, truth, threshold_base=100).tolist() == [True, False, True]


def test_bad_dataset_layout(tmp_path):
    layout = ("ROOT/PairAnnotation/<split>/*.json", "ROOT/JPEGImages/<category>/*.jpg", "SPair-71k.tar.gz")
    with pytest.raises(InputError, match="PairAnnotation/test not found") as wrong_folder:
        read_pairs(tmp_path)
    assert all(line in str(wrong_folder.value) for line in layout)  # the error shows the layout to fix it
    (tmp_path / "PairAnnotation" / "trn").mkdir(parents=True)
    with pytest.raises(InputError, match="has splits trn"):  # the splits that are there
        read_pairs(tmp_path)
    folder = tmp_path / "PairAnnotation" / "test"
    folder.mkdir(parents=True)
    with pytest.raises(InputError, match="JPEGImages not found") as no_images:
        read_pairs(tmp_path)
    assert all(line in str(no_images.value) for line in layout)
    (tmp_path / "JPEGImages").mkdir()
    (folder / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        read_pairs(tmp_path)
    (folder / "broken.json").write_text(json.dumps({"src_imname": "a.jpg"}))
    with pytest.raises(InputError, match="missing keys"):
        read_pairs(tmp_path)


def test_evaluate_needs_an_extract_method(dataset):
    with pytest.raises(InputError, match="extract"):
        evaluate(object(), dataset[0])


def test_a_source_keypoint_outside_its_image_is_skipped_and_counted(dataset):
    """SPair has a few keypoints annotated off the image: they are left out and counted, the run goes on."""
    root, extractor = dataset
    expected = evaluate(extractor, root)
    first = sorted((root / "PairAnnotation" / "test").glob("*cat*.json"))[0]
    pair = json.loads(first.read_text())
    pair["src_kps"].append([SIZE[1] + 5, 10])  # past the right edge
    pair["trg_kps"].append([0, 0])
    pair["src_kps"].append([-1, 3])
    pair["trg_kps"].append([0, 0])
    first.write_text(json.dumps(pair))
    result = evaluate(extractor, root)
    assert result.skipped_points == 2 and result.points == expected.points
    assert result.all_per_image == expected.all_per_image  # the same score over the same points
    assert result.to_dict()["skipped_points"] == 2
    assert "2 source keypoint(s) annotated outside their image" in result.table()
