"""`ditf eval-ap10k` on a small set in the layout GeoAware-SC's prepare_ap10k.ipynb writes, against a
straightforward computation of the protocol written here: naive bilinear upsampling (align_corners=False) of
flux-tiny's maps to each image's size, cosine, argmax; keypoints visible in both images; alpha * the longer side
of the target's bbox [left, top, width, height]; per image and per point, All and Mean."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import ditf_runtime
from ditf_runtime.cli import main
from ditf_runtime.datasets.ap10k import read_ap10k_pairs
from ditf_runtime.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
KEYPOINTS = 17
TIE = 1e-12  # float64 cosine: exact ties (the clamped border band) go to the first pixel, row-major

# family, species, image id, (height, width): odd sizes, none a multiple of the model's 16
IMAGES = [
    ("canidae", "dog", 1, (75, 101)),
    ("canidae", "dog", 2, (75, 101)),  # the same pixels as 1: its points map home
    ("canidae", "dog", 3, (97, 131)),
    ("canidae", "fox", 4, (83, 119)),
    ("canidae", "fox", 5, (121, 77)),
    ("felidae", "cat", 6, (99, 99)),
    ("felidae", "cat", 7, (67, 125)),
    ("felidae", "lion", 8, (89, 113)),
    ("bovidae", "antelope", 9, (105, 93)),
    ("bovidae", "antelope", 10, (71, 109)),
]
SAME_PIXELS = {2: 1}
PAIRS = {
    "test": [(1, 2, "dog"), (3, 1, "dog"), (2, 3, "dog"), (4, 5, "fox"), (6, 7, "cat"), (9, 10, "antelope")],
    "test_cross_species": [(1, 4, "canidae"), (5, 3, "canidae"), (8, 6, "felidae")],
    "test_cross_family": [(1, 6, "all"), (10, 4, "all"), (7, 9, "all"), (2, 8, "all")],  # 2-8: none visible in both
    "val": [(2, 3, "dog"), (5, 4, "fox")],  # no cat, lion or antelope in val
    "val_cross_species": [(3, 5, "canidae")],
    "val_cross_family": [(6, 2, "all")],
}
SUBSET_SPLITS = {
    ("intra-species", "test"): "test",
    ("cross-species", "test"): "test_cross_species",
    ("cross-family", "test"): "test_cross_family",
    ("intra-species", "val"): "val",
    ("cross-species", "val"): "val_cross_species",
    ("cross-family", "val"): "val_cross_family",
}


def _name(image_id: int) -> str:
    return f"{image_id:012d}"  # the preparation names files by the zero-padded image id


def make_ap10k(root: Path) -> Path:
    """Images, per-image annotations and pair files as prepare_ap10k.ipynb lays them out (paths inside the pair
    files as the preparation writes them: relative to where it ran)."""
    rng = np.random.default_rng(25)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(EXAMPLES.glob("*.jpg"))]
    pixels: dict[int, np.ndarray] = {}
    where: dict[int, str] = {}
    for family, species, image_id, (height, width) in IMAGES:
        if image_id in SAME_PIXELS:
            pixels[image_id] = pixels[SAME_PIXELS[image_id]]
        else:
            photo = photos[image_id % len(photos)]
            top = int(rng.integers(0, photo.shape[0] - 2 * height))
            left = int(rng.integers(0, photo.shape[1] - 2 * width))
            crop = Image.fromarray(photo[top: top + 2 * height, left: left + 2 * width])
            pixels[image_id] = np.asarray(crop.resize((width, height)))
        folder = root / "JPEGImages" / family / species
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[image_id]).save(folder / f"{_name(image_id)}.jpg", quality=95)
        where[image_id] = f"{family}/{species}"
    keypoints: dict[int, list[float]] = {}
    for family, species, image_id, (height, width) in IMAGES:
        if image_id in SAME_PIXELS:
            triples = list(keypoints[SAME_PIXELS[image_id]])
        else:
            triples = []
            for k in range(KEYPOINTS):
                visible = k % 5 != 4 and not (image_id == 8 and k < 16)
                # clear of the border band where upsampling repeats a cell's vector (exact ties)
                x, y = int(rng.integers(10, width - 10)), int(rng.integers(10, height - 10))
                v = (1 if k == 3 else 2) if visible else 0  # v = 1 (labelled, occluded) counts too: v > 0
                triples += [x, y, v] if visible else [0, 0, 0]
            if image_id == 5:
                triples[0] += 0.4  # a fractional source point: looked up at the nearest pixel
        if image_id == 2:  # image 1's points, but 16 (and 8's 0..15) not visible: pair 2-8 has none in both
            triples[16 * 3: 17 * 3] = [0, 0, 0]
        keypoints[image_id] = triples
        left, top = int(rng.integers(0, width // 4)), int(rng.integers(0, height // 4))
        box = [left, top, int(rng.integers(width // 2, width - left)), int(rng.integers(height // 2, height - top))]
        annotation = {"id": image_id, "image_id": image_id, "bbox": box, "keypoints": triples,
                      "num_keypoints": sum(1 for v in triples[2::3] if v), "width": width, "height": height,
                      "file_name": f"{_name(image_id)}.jpg", "name": species, "supercategory": family}
        folder = root / "ImageAnnotation" / family / species
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{_name(image_id)}.json").write_text(json.dumps(annotation))
    for split, pairs in PAIRS.items():
        folder = root / "PairAnnotation" / split
        folder.mkdir(parents=True)
        for src, trg, category in pairs:
            (folder / f"{_name(src)}-{_name(trg)}:{category}.json").write_text(json.dumps({
                "src_json_path": f"data/ap-10k/ImageAnnotation/{where[src]}/{_name(src)}.json",
                "trg_json_path": f"data/ap-10k/ImageAnnotation/{where[trg]}/{_name(trg)}.json"}))
    return root


# -- the protocol, written out ---------------------------------------------------------------------------


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: PyTorch's bilinear weights along one axis (align_corners=False, source index clamped at 0)."""
    matrix = np.zeros((n_out, n_in))
    for o in range(n_out):
        source = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(source), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        matrix[o, i0] += 1 - (source - i0)
        matrix[o, i1] += source - i0
    return matrix


def naive_upsample(features: np.ndarray, height: int, width: int) -> np.ndarray:
    chw = np.asarray(features, np.float64).reshape(np.asarray(features).shape[-3:])
    _, h, w = chw.shape
    return np.einsum("Yh,chw,Xw->cYX", _interpolation_matrix(h, height), chw, _interpolation_matrix(w, width))


def reference_pck(features_of, root: Path, split_folder: str, alpha: float = 0.1) -> dict:
    """The protocol, read from the raw files: {category: [(correct, points), ...]}, skipped pairs."""
    per_category: dict[str, list[tuple[int, int]]] = {}
    skipped = 0
    for pair_file in sorted((root / "PairAnnotation" / split_folder).glob("*.json")):
        category = pair_file.stem.split(":")[-1]
        pair = json.loads(pair_file.read_text())
        src_json = root / pair["src_json_path"].split("ap-10k/")[1]
        trg_json = root / pair["trg_json_path"].split("ap-10k/")[1]
        src, trg = json.loads(src_json.read_text()), json.loads(trg_json.read_text())
        src_kps = np.array(src["keypoints"], float).reshape(-1, 3)
        trg_kps = np.array(trg["keypoints"], float).reshape(-1, 3)
        both = (src_kps[:, 2] > 0) & (trg_kps[:, 2] > 0)
        if not both.any():
            skipped += 1
            continue
        src_up = naive_upsample(features_of(src_json), src["height"], src["width"])
        trg_up = naive_upsample(features_of(trg_json), trg["height"], trg["width"])
        trg_flat = trg_up.reshape(trg_up.shape[0], -1)
        trg_norm = np.linalg.norm(trg_flat, axis=0)
        threshold = alpha * max(trg["bbox"][2], trg["bbox"][3])
        correct = 0
        for (x, y, _), (tx, ty, _) in zip(src_kps[both], trg_kps[both]):
            vector = src_up[:, int(np.floor(y + 0.5)), int(np.floor(x + 0.5))]
            cosine = vector @ trg_flat / (np.linalg.norm(vector) * trg_norm)
            best = int(np.flatnonzero(cosine >= cosine.max() - TIE)[0])
            py, px = divmod(best, trg["width"])
            correct += bool(np.hypot(px - tx, py - ty) <= threshold)
        per_category.setdefault(category, []).append((correct, int(both.sum())))
    return {"per_category": per_category, "skipped": skipped}


def summarise(reference: dict) -> dict:
    """eval-spair's numbers from per-pair counts: per image and per point, per category, All and Mean."""
    per_category = dict(sorted(reference["per_category"].items()))  # eval-spair lists categories sorted
    fractions = {c: [k / n for k, n in pairs] for c, pairs in per_category.items()}
    per_image = {c: float(np.mean(f)) for c, f in fractions.items()}
    per_point = {c: sum(k for k, _ in p) / sum(n for _, n in p) for c, p in per_category.items()}
    every = [f for c in fractions for f in fractions[c]]
    pairs = [pair for c in per_category for pair in per_category[c]]
    return {
        "pairs": len(every),
        "points": sum(n for _, n in pairs),
        "skipped_pairs": reference["skipped"],
        "image": {"All": float(np.mean(every)), "Mean": float(np.mean(list(per_image.values()))), **per_image},
        "point": {"All": sum(k for k, _ in pairs) / sum(n for _, n in pairs),
                  "Mean": float(np.mean(list(per_point.values()))), **per_point},
    }


def assert_matches(got: dict, want: dict) -> None:
    for key in ("pairs", "points", "skipped_pairs"):
        assert got[key] == want[key], key
    for kind in ("image", "point"):
        assert list(got[kind]) == list(want[kind]), kind  # All, Mean, then the categories in order
        for name, value in want[kind].items():
            assert got[kind][name] == pytest.approx(value, rel=1e-12, abs=1e-15), (kind, name)


class CountingExtractor:
    """The real extractor, counting the images it is asked for."""

    def __init__(self, extractor):
        self.extractor, self.calls = extractor, 0
        self.manifest = extractor.manifest

    def extract(self, images, **options):
        self.calls += len(images)
        return self.extractor.extract(images, **options)


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ap10k(tmp_path_factory) -> Path:
    return make_ap10k(tmp_path_factory.mktemp("ap10k") / "ap-10k")


@pytest.fixture(scope="module")
def flux(flux_tiny_export):
    with ditf_runtime.load(flux_tiny_export, threads=1) as extractor:
        yield extractor


@pytest.fixture(scope="module")
def features_of(flux, ap10k):
    """An image annotation's image -> flux-tiny's map of its pixels (each computed once)."""
    maps: dict[Path, np.ndarray] = {}

    def get(annotation: Path) -> np.ndarray:
        if annotation not in maps:
            relative = annotation.relative_to(ap10k / "ImageAnnotation").with_suffix(".jpg")
            pixels = np.asarray(Image.open(ap10k / "JPEGImages" / relative).convert("RGB"))
            maps[annotation] = np.asarray(flux.extract([pixels])[0])
        return maps[annotation]

    return get


def _run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# -- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subset, split", list(SUBSET_SPLITS))
def test_every_subset_matches_the_protocol_written_out(subset, split, ap10k, flux, features_of):
    result = ditf_runtime.evaluate_ap10k(flux, ap10k, subset, split)
    want = summarise(reference_pck(features_of, ap10k, SUBSET_SPLITS[subset, split]))
    assert_matches(result.to_dict(), want)
    if (subset, split) == ("intra-species", "test"):
        # Image 2 is image 1's pixels and points: pair 1-2 is a perfect score; the others are random features.
        assert result.pair_pck[f"{_name(1)}-{_name(2)}:dog.json"] == 1.0
        assert 0 < result.all_per_point < 1
        assert list(result.categories) == ["antelope", "cat", "dog", "fox"]
    if subset == "cross-family" and split == "test":
        assert result.skipped_pairs == 1 and list(result.categories) == ["all"]  # 2-8: no keypoint visible in both
    if split == "val" and subset == "intra-species":
        assert list(result.categories) == ["dog", "fox"]


def test_other_alpha(ap10k, flux, features_of):
    result = ditf_runtime.evaluate_ap10k(flux, ap10k, "cross-species", alpha=0.25)
    assert_matches(result.to_dict(), summarise(reference_pck(features_of, ap10k, "test_cross_species", alpha=0.25)))


def test_cli_json_has_eval_spairs_shape_and_resumes(ap10k, flux, flux_tiny_export, features_of, tmp_path):
    out, json_path = tmp_path / "scores", tmp_path / "pck.json"
    args = ["eval-ap10k", ap10k, "--model", flux_tiny_export, "--subset", "cross-species", "--threads", "1",
            "--out", out, "--json", json_path]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "canidae" in result.output and "All" in result.output and "Mean" in result.output
    got = json.loads(json_path.read_text())
    assert set(got) == {"model", "alpha", "pairs", "points", "skipped_pairs", "skipped_points", "image", "point",
                        "categories"}  # "model": what made the numbers (the picture captions' facts)
    assert got["model"]["model_name"].endswith("flux-tiny") and got["model"]["random_weights"] is True
    assert got == ditf_runtime.evaluate_ap10k(flux, ap10k, "cross-species").to_dict()
    assert_matches(got, summarise(reference_pck(features_of, ap10k, "test_cross_species")))
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 3
    # Another alpha from the recorded distances: the same numbers as a fresh run at that alpha.
    again = _run(*args, "--alpha", "0.3")
    assert again.exit_code == 0, again.output
    assert "3 pairs' scores resumed" in again.output
    fresh = ditf_runtime.evaluate_ap10k(flux, ap10k, "cross-species", alpha=0.3).to_dict()
    assert json.loads(json_path.read_text()) == fresh


def test_resume_scores_only_the_missing_pairs(ap10k, flux, tmp_path):
    out = tmp_path / "scores"
    counting = CountingExtractor(flux)
    first = ditf_runtime.evaluate_ap10k(counting, ap10k, out_dir=out)
    assert counting.calls == 9  # the images of test's 6 intra-species pairs, each once
    lines = (out / "pairs.jsonl").read_text().splitlines()
    # An interrupted run: two pairs done, the third torn while being written.
    (out / "pairs.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    counting.calls = 0
    resumed = ditf_runtime.evaluate_ap10k(counting, ap10k, out_dir=out)
    assert resumed.to_dict() == first.to_dict()
    # Pairs go by category: antelope 9-10 and cat 6-7 were recorded; dog's three and fox's one need 1..5.
    assert counting.calls == 5
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 6
    counting.calls = 0
    assert ditf_runtime.evaluate_ap10k(counting, ap10k, out_dir=out).to_dict() == first.to_dict()
    assert counting.calls == 0  # everything recorded
    with pytest.raises(InputError, match="differs in extract_options"):
        ditf_runtime.evaluate_ap10k(counting, ap10k, out_dir=out, seed=1)
    with pytest.raises(InputError, match="differs in dataset"):
        ditf_runtime.evaluate_ap10k(counting, ap10k, "cross-family", out_dir=out)
    redo = ditf_runtime.evaluate_ap10k(counting, ap10k, "cross-family", out_dir=out, overwrite=True)
    assert redo.categories.keys() == {"all"} and counting.calls > 0


def test_a_small_feature_cache_recomputes_but_changes_nothing(ap10k, flux):
    counting = CountingExtractor(flux)
    roomy = ditf_runtime.evaluate_ap10k(counting, ap10k, "cross-family")
    assert counting.calls == 6  # six distinct images in the three scored pairs, each computed once
    counting.calls = 0
    tight = ditf_runtime.evaluate_ap10k(counting, ap10k, "cross-family", cache_bytes=0)
    assert counting.calls == 6 and tight.to_dict() == roomy.to_dict()  # no image recurs in these pairs
    counting.calls = 0
    tight = ditf_runtime.evaluate_ap10k(counting, ap10k, "intra-species", cache_bytes=0)
    assert counting.calls == 12 and tight.to_dict() == ditf_runtime.evaluate_ap10k(flux, ap10k).to_dict()


def test_fused_models_on_the_cli(ap10k, flux_tiny_export, dinov2_tiny_export, tmp_path):
    dino = dinov2_tiny_export(False)
    json_path = tmp_path / "fused.json"
    result = _run("eval-ap10k", ap10k, "--model", flux_tiny_export, "--model", dino, "--fuse-weight", "0.7",
                  "--subset", "cross-family", "--threads", "1", "--json", json_path)
    assert result.exit_code == 0, result.output
    with ditf_runtime.load(flux_tiny_export, dino, weights=(0.7, 0.3), threads=1) as fused:
        maps: dict[Path, np.ndarray] = {}

        def fused_features(annotation: Path) -> np.ndarray:
            if annotation not in maps:
                relative = annotation.relative_to(ap10k / "ImageAnnotation").with_suffix(".jpg")
                pixels = np.asarray(Image.open(ap10k / "JPEGImages" / relative).convert("RGB"))
                maps[annotation] = np.asarray(fused.extract([pixels])[0])
            return maps[annotation]

        assert_matches(json.loads(json_path.read_text()),
                       summarise(reference_pck(fused_features, ap10k, "test_cross_family")))


def test_val_split_without_a_category(ap10k, flux):
    with pytest.raises(InputError, match=r"no pairs of categories \['cat'\]"):
        read_ap10k_pairs(ap10k, "intra-species", "val", categories=["cat"])
    assert ditf_runtime.evaluate_ap10k(flux, ap10k, split="val", categories=["fox"]).pairs == 1


def test_a_missing_image_is_named(ap10k, flux_tiny_export, tmp_path):
    root = shutil.copytree(ap10k, tmp_path / "ap-10k")
    missing = root / "JPEGImages" / "felidae" / "cat" / f"{_name(7)}.jpg"
    missing.unlink()
    with pytest.raises(InputError, match="not found") as error:
        read_ap10k_pairs(root)
    assert str(missing) in str(error.value) and f"{_name(6)}-{_name(7)}:cat.json" in str(error.value)
    assert read_ap10k_pairs(root, categories=["dog"])  # other categories still run
    result = _run("eval-ap10k", root, "--model", flux_tiny_export)
    assert result.exit_code == 1 and str(missing) in result.output and "Traceback" not in result.output
    (root / "ImageAnnotation" / "felidae" / "cat" / f"{_name(7)}.json").unlink()
    with pytest.raises(InputError, match=f"image annotation .*{_name(7)}.json is missing"):
        read_ap10k_pairs(root)


def test_wrong_folder_shows_the_layout(tmp_path, ap10k, flux_tiny_export):
    layout = ("PairAnnotation/<split>/*:<species>.json", "ImageAnnotation/<family>/<species>/<id>.json",
              "JPEGImages/<family>/<species>/<id>.jpg", "GeoAware-SC")
    with pytest.raises(InputError, match="PairAnnotation/test not found") as error:
        read_ap10k_pairs(tmp_path)
    assert all(line in str(error.value) for line in layout)
    result = _run("eval-ap10k", tmp_path, "--model", flux_tiny_export)
    assert result.exit_code == 1 and "GeoAware-SC" in result.output and "Traceback" not in result.output
    # A subset the preparation did not write: the splits that are there, and the options that pick them.
    root = shutil.copytree(ap10k, tmp_path / "partial")
    shutil.rmtree(root / "PairAnnotation" / "test_cross_family")
    with pytest.raises(InputError, match="test_cross_family not found; this dataset has splits test, "
                                         "test_cross_species, val.* \\(--split and --subset\\)"):
        read_ap10k_pairs(root, "cross-family")
    with pytest.raises(InputError, match="unknown AP-10K subset"):
        read_ap10k_pairs(root, "cross-genus")
    shutil.rmtree(root / "JPEGImages")
    with pytest.raises(InputError, match="JPEGImages not found"):
        read_ap10k_pairs(root)


def test_annotations_that_do_not_fit(tmp_path, ap10k, flux):
    root = shutil.copytree(ap10k, tmp_path / "ap-10k")
    target = root / "ImageAnnotation" / "felidae" / "cat" / f"{_name(7)}.json"
    annotation = json.loads(target.read_text())
    target.write_text(json.dumps({**annotation, "width": annotation["width"] + 1}))
    with pytest.raises(InputError, match=r"000000000007.jpg is \(67, 125\) \(h, w\) but annotated as \(67, 126\)"):
        ditf_runtime.evaluate_ap10k(flux, root, categories=["cat"])
    pair = root / "PairAnnotation" / "test" / f"{_name(6)}-{_name(7)}:cat.json"
    pair.write_text(json.dumps({"src_json_path": "ap-10k/annotations/x.json", "trg_json_path": "x.json"}))
    with pytest.raises(InputError, match="is not ImageAnnotation/<family>/<species>/<id>.json"):
        read_ap10k_pairs(root)
    pair.write_text(json.dumps({"src": "a.json"}))
    with pytest.raises(InputError, match="holds src_json_path and trg_json_path"):
        read_ap10k_pairs(root)
    pair.rename(pair.with_name("no-category.json"))
    with pytest.raises(InputError, match="named <source>-<target>:<category>.json"):
        read_ap10k_pairs(root)
