"""How much PIL's bilinear resize (ditf) differs from OpenCV's INTER_LINEAR (the authors' eval_davis.py).

    pip install opencv-python-headless      # only for this check: ditf never imports OpenCV
    python bench/davis_resize_check.py [--model EXPORT]

1. Pixels: the photos in examples/images, first made DAVIS-like (854x480 JPEGs), then read and
   resized to the protocol's 832x480 (S = 480) both ways: OpenCV (cv2.imread, BGR -> RGB,
   cv2.resize INTER_LINEAR) against PIL (Image.open, BILINEAR). Reported separately: the resize
   alone (same decoded pixels in) and decode + resize (what each pipeline really sees).
2. Masks: the synthetic DAVIS set of the tests (tests/davis_synthetic.py) at 854x480, propagated
   by evaluate_davis with frames read by PIL, then again with frames read by OpenCV, with the
   hand-made colour features (and --model EXPORT's features when given): differing mask pixels
   and J&F of both. Not part of CI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # davis_synthetic: the test suite's synthetic DAVIS set

DAVIS_SIZE = (480, 854)  # h, w of a DAVIS 480p frame
SHORT_SIDE = 480


def opencv_frame(path, size):
    import cv2

    pixels = cv2.imread(str(path))
    pixels = cv2.resize(pixels, (size[1], size[0]))  # default interpolation: INTER_LINEAR
    return np.ascontiguousarray(pixels[:, :, ::-1])


def pixel_differences(folder: Path) -> list[tuple[str, float, float, float, float, float]]:
    import cv2

    from ditf_runtime.davis.features import protocol_size, read_frame

    rows = []
    for photo in sorted((ROOT / "examples" / "images").glob("*.jpg")):
        frame = folder / photo.name
        Image.open(photo).convert("RGB").resize(DAVIS_SIZE[::-1], Image.Resampling.LANCZOS).save(frame, quality=90)
        size = protocol_size(*DAVIS_SIZE, SHORT_SIDE)
        decoded_pil = np.asarray(Image.open(frame).convert("RGB"))
        decoded_cv = np.ascontiguousarray(cv2.imread(str(frame))[:, :, ::-1])
        resized_pil = np.asarray(Image.fromarray(decoded_cv).resize(size[::-1], Image.Resampling.BILINEAR))
        resized_cv = cv2.resize(decoded_cv, size[::-1])
        alone = np.abs(resized_pil.astype(int) - resized_cv.astype(int))
        full = np.abs(read_frame(frame, size).astype(int) - opencv_frame(frame, size).astype(int))
        decode = np.abs(decoded_pil.astype(int) - decoded_cv.astype(int))
        rows.append((photo.name, decode.max(), alone.max(), alone.mean(), full.max(), full.mean(), np.mean(full > 2)))
    return rows


def mask_differences(extractors: dict, folder: Path):
    import ditf_runtime.davis.features as features
    from davis_synthetic import make_davis
    from ditf_runtime.davis import evaluate_davis
    from ditf_runtime.davis.masks import read_label_png

    make_davis(folder / "davis", size=DAVIS_SIZE)
    rows = []
    for name, extractor in extractors.items():
        results = {}
        for reader in ("pil", "opencv"):
            if reader == "opencv":  # swap the frame reader for the authors' OpenCV path, for this run only
                original, features.read_frame = features.read_frame, opencv_frame
            try:
                results[reader] = evaluate_davis(
                    extractor, folder / "davis", size=SHORT_SIDE, out_dir=folder / f"{name}-{reader}"
                )
            finally:
                if reader == "opencv":
                    features.read_frame = original
        differing = total = 0
        for png in sorted((folder / f"{name}-pil").rglob("*.png")):
            a = read_label_png(png)
            b = read_label_png(folder / f"{name}-opencv" / png.relative_to(folder / f"{name}-pil"))
            differing += int(np.count_nonzero(a != b))
            total += a.size
        rows.append((name, differing, total, results["pil"].jf_mean, results["opencv"].jf_mean))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="also propagate with this export's features")
    args = parser.parse_args()
    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.exit("this check compares against OpenCV: pip install opencv-python-headless")
    from davis_synthetic import ColourFeatures

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"1. pixels: examples/images as {DAVIS_SIZE[1]}x{DAVIS_SIZE[0]} JPEGs -> 832x480 (uint8 levels)")
        print(f"{'photo':<16} {'decode max':>10} {'resize max':>10} {'resize mean':>11} {'both max':>9} "
              f"{'both mean':>9} {'>2 levels':>9}")  # fmt: skip
        for name, decode, alone_max, alone_mean, full_max, full_mean, over in pixel_differences(folder):
            print(f"{name:<16} {decode:>10} {alone_max:>10} {alone_mean:>11.3f} {full_max:>9} {full_mean:>9.3f} "
                  f"{over:>9.2%}")  # fmt: skip
        extractors = {"colour": ColourFeatures()}
        if args.model:
            import ditf_runtime

            extractors["model"] = ditf_runtime.load(args.model)
        print("\n2. masks: synthetic DAVIS set at 854x480, S = 480, PIL vs OpenCV frame reading")
        print(f"{'features':<10} {'pixels differing':>17} {'of':>11} {'J&F PIL':>8} {'J&F OpenCV':>10}")
        for name, differing, total, pil_jf, cv_jf in mask_differences(extractors, folder):
            print(f"{name:<10} {differing:>17} {total:>11} {100 * pil_jf:>8.2f} {100 * cv_jf:>10.2f}")


if __name__ == "__main__":
    main()
