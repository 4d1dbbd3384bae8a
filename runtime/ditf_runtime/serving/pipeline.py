"""Server-side request handling, shared by `ditf serve` (PyTriton) and the Triton python-backend
model that `ditf triton-repo` writes: requests in, per-request responses or errors out.

Each request is checked on its own (a malformed one gets its own error), then the rows of all
valid requests are grouped by (model, model input size, E) and run `max_batch_size` at a time through
that model's `run(image, noise) -> features`: `Extractor.run` in-process, or a BLS call to the graph
model inside Triton. Preprocessing and default noise are the runtime's own (preprocess.prepare,
noise.default_noise), so a served image gets exactly the arrays local extraction feeds the graph.

A fused pipeline (`FeaturePipeline.fused`, two exports) prepares every image once per model, runs
both graphs and fuses the two maps (fusion.fuse_arrays), so a served image gets exactly the fused map
of `ditf_runtime.load(a, b).extract`. It takes uint8 images only: 'pixels', 'noise' and 'size' are
one model's inputs, and each fused model keeps its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..cpu_variant import GraphChoice
from ..errors import BackendError, DitfError, InputError
from ..features import FeatureMap
from ..fusion import MODELS, check_weights, fuse_arrays
from ..manifest import NOISE_INPUT, Manifest
from ..matching import cell_centers, mutual_nn_matches, transfer_keypoints
from ..noise import DEFAULT_SEED, check_image_noise, default_noise
from ..preprocess import DEFAULT_MAX_PIXELS, prepare
from .protocol import (
    DEFAULT_MAX_MATCHES,
    ERROR_OUTPUT,
    EXTRACT_MODEL,
    MATCH_MODEL,
    Feed,
    batch_size,
    error_column,
    read_array,
    read_option,
)

# Requests are untrusted: bound what one of them may make the server allocate.
MAX_ENSEMBLE = 64
MAX_LONG_SIDE = 4096


Run = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
# memory.check_runs with the server's budget: refuses graph calls that would not fit together
MemoryCheck = Callable[[list], object]


@dataclass
class _Row:
    """One image as one model sees it (a fused request has one row per model for each image)."""

    request: int
    pixels: np.ndarray  # float32 [3, H, W]
    noise: np.ndarray | None  # float32 [E, c, H/vs, W/vs]; None for a graph without noise
    image_size: tuple[int, int]
    model: int = 0  # which member runs it
    features: np.ndarray | None = None

    @property
    def key(self) -> tuple:
        return (self.model, self.pixels.shape[1:], 0 if self.noise is None else self.noise.shape[0])


@dataclass(frozen=True)
class Member:
    """One export the pipeline runs: its manifest, `run(image, noise)`, the one E its engine takes, its graph."""

    manifest: Manifest
    run: Run
    fixed_ensemble: int | None = None
    graph: GraphChoice | None = None  # Extractor.graph: whether attention is fused, for the memory check

    @property
    def has_noise(self) -> bool:
        return any(spec.name == NOISE_INPUT for spec in self.manifest.inputs)


class FeaturePipeline:
    """`handle(task, requests)` -> one response dict or one DitfError per request."""

    def __init__(
        self,
        manifest: Manifest,
        run: Run,
        *,
        max_batch_size: int = 8,
        fixed_ensemble: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.members = (Member(manifest, run, fixed_ensemble),)
        self.weights: tuple[float, ...] | None = None  # fused pipelines only
        self.max_batch_size = int(max_batch_size)
        self.max_pixels = max_pixels
        self.check_memory: MemoryCheck | None = None  # fused pipelines: both graphs' calls together

    @classmethod
    def fused(cls, members: Sequence[Member], weights: Sequence[float], *, max_batch_size: int = 8,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, check_memory: MemoryCheck | None = None) -> "FeaturePipeline":
        """Two exports' fused features (fusion.py): each image prepared and run once per model.

        The two graphs run at once (two threads), so each member's own memory check does not see the other's
        share: `check_memory` (memory.check_runs with the budget) refuses a request whose two calls would
        not fit together; the server stays up for the others.
        """
        if len(members) != MODELS:
            raise InputError(f"a fused pipeline takes exactly {MODELS} exports, got {len(members)}")
        pipeline = cls(members[0].manifest, members[0].run, max_batch_size=max_batch_size,
                       fixed_ensemble=members[0].fixed_ensemble, max_pixels=max_pixels)
        pipeline.members = tuple(members)
        pipeline.weights = check_weights(weights)
        pipeline.check_memory = check_memory
        return pipeline

    # single-model views (what the unfused pipeline and its callers read)
    @property
    def manifest(self) -> Manifest:
        return self.members[0].manifest

    @property
    def geometry(self):
        return self.manifest.geometry

    @property
    def run(self) -> Run:
        return self.members[0].run

    @property
    def fixed_ensemble(self) -> int | None:
        return self.members[0].fixed_ensemble

    @property
    def feature_channels(self) -> int:
        return sum(m.manifest.geometry.feature_channels for m in self.members)

    def handle(self, task: str, requests: Sequence[Feed]) -> list:
        if task == EXTRACT_MODEL:
            return self.extract(requests)
        if task == MATCH_MODEL:
            return self.match(requests)
        raise InputError(f"unknown task {task!r}")

    # -- extract ---------------------------------------------------------------------------------
    def extract(self, requests: Sequence[Feed]) -> list:
        results: list = [None] * len(requests)
        rows: dict[int, list[_Row]] = {}
        for index, feed in enumerate(requests):
            try:
                rows[index] = self._extract_rows(index, feed)
                self._check_request_memory(rows[index])
            except DitfError as exc:
                rows.pop(index, None)
                results[index] = exc
        self._run_rows([row for group in rows.values() for row in group], results)
        for index, group in rows.items():
            if results[index] is None:
                images = [self._image_features(image) for image in _by_image(group, len(self.members))]
                results[index] = {
                    "features": np.stack([features for features, _, _ in images]),
                    "image_size": np.asarray([image_size for _, _, image_size in images], dtype=np.int64),
                    "input_size": np.asarray([input_size for _, input_size, _ in images], dtype=np.int64),
                    ERROR_OUTPUT: error_column(len(images)),
                }
        return results

    def _image_features(self, rows: Sequence[_Row]) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """(features [C, h, w], input size, image size) of one image from its row per model."""
        if self.weights is None:
            row = rows[0]
            return row.features, row.pixels.shape[1:], row.image_size
        features, finer = fuse_arrays([row.features for row in rows], self.weights)
        return features, rows[finer].pixels.shape[1:], rows[0].image_size

    def _extract_rows(self, index: int, feed: Feed) -> list[_Row]:
        has_image, has_pixels = feed.get("image") is not None, feed.get("pixels") is not None
        if self.weights is not None and (has_pixels or feed.get("noise") is not None):
            raise InputError("this server fuses two models, each preparing its own input: send the uint8 'image' "
                             "(no 'pixels' or 'noise')")
        if has_image == has_pixels:
            raise InputError("send exactly one of 'image' (uint8 [B, H, W, 3]) or 'pixels' (float32 [B, 3, H, W])")
        batch = batch_size(feed)
        seeds, ensembles, sizes = (read_option(feed, name, batch) for name in ("seed", "ensemble", "size"))
        if not has_image:
            if any(size is not None for size in sizes):
                raise InputError("'size' resizes an 'image'; 'pixels' are already the model input")
            pixels = read_array(feed, "pixels", np.float32, 4)
            noise = feed.get("noise")
            if noise is not None:
                noise = read_array(feed, "noise", np.float32, 5)
            return [
                _Row(index, self._check_pixels(pixels[i]), self._noise(self.members[0], pixels[i], noise, i, seeds[i],
                                                                       ensembles[i]), tuple(pixels.shape[2:]))
                for i in range(batch)
            ]
        images = read_array(feed, "image", np.uint8, 4)
        noise = feed.get("noise")
        if noise is not None:
            noise = read_array(feed, "noise", np.float32, 5)
        rows = []
        for i in range(batch):
            for k, member in enumerate(self.members):
                pixels, image_size = self._prepare(member, images[i], sizes[i])
                rows.append(_Row(index, pixels, self._noise(member, pixels, noise, i, seeds[i], ensembles[i]),
                                 image_size, model=k))
        return rows

    def _prepare(self, member: Member, image: np.ndarray, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
        geometry = member.manifest.geometry
        if size is not None and self.weights is not None:
            raise InputError("'size': each fused model keeps its own input size; leave it out")
        if size is not None and not geometry.size_multiple <= size <= MAX_LONG_SIDE:
            raise InputError(f"size {size} must be between {geometry.size_multiple} and {MAX_LONG_SIDE}")
        item = prepare(
            image,
            member.manifest.preprocess,
            geometry,
            long_side=size,
            exif_transpose=False,  # arrays carry no EXIF; clients apply it when they read files
            max_pixels=self.max_pixels,
        )
        return item.pixels, item.image_size

    def _check_pixels(self, pixels: np.ndarray) -> np.ndarray:
        multiple = self.geometry.size_multiple
        _, height, width = pixels.shape
        if pixels.shape[0] != 3:
            raise InputError(f"pixels must be [B, 3, H, W] RGB, got a row of shape {pixels.shape}")
        if height < multiple or width < multiple or height % multiple or width % multiple:
            raise InputError(
                f"pixels are {height}x{width}: height and width must be positive multiples of {multiple} "
                "(send the uint8 'image' instead to have the server resize it)"
            )
        if max(height, width) > MAX_LONG_SIDE:
            raise InputError(f"pixels are {height}x{width}: the long side must be <= {MAX_LONG_SIDE}")
        if not np.isfinite(pixels).all():
            raise InputError("pixels hold NaN or infinite values")
        return np.ascontiguousarray(pixels)

    def _noise(self, member: Member, pixels, noise, row, seed, ensemble) -> np.ndarray | None:
        if not member.has_noise:
            if noise is not None or (ensemble is not None and self.weights is None):
                raise InputError(f"{member.manifest.model_name} takes no noise: leave out 'noise' and 'ensemble'")
            return None  # (a fused server's E is for the model that has noise)
        input_size = (pixels.shape[1], pixels.shape[2])
        geometry = member.manifest.geometry
        if noise is not None:
            if seed is not None:
                raise InputError("send either 'noise' or 'seed', not both (seed only draws the default noise)")
            checked = check_image_noise(noise[row], geometry, input_size, f"row {row}")
            if ensemble is not None and checked.shape[0] != ensemble:
                raise InputError(f"ensemble={ensemble} disagrees with the E={checked.shape[0]} of the given noise")
            self._check_ensemble(member, checked.shape[0])
            return np.ascontiguousarray(checked)
        default = member.fixed_ensemble or member.manifest.feature.ensemble
        ensemble = default if ensemble is None else ensemble
        self._check_ensemble(member, ensemble)
        return default_noise(pixels, geometry, ensemble, DEFAULT_SEED if seed is None else seed)

    @staticmethod
    def _check_ensemble(member: Member, ensemble: int) -> None:
        if not 1 <= ensemble <= MAX_ENSEMBLE:
            raise InputError(f"ensemble must be between 1 and {MAX_ENSEMBLE}, got {ensemble}")
        if member.fixed_ensemble is not None and ensemble != member.fixed_ensemble:
            raise InputError(f"this server's engine was built for ensemble E={member.fixed_ensemble}, got E={ensemble}")

    # -- match -----------------------------------------------------------------------------------
    def match(self, requests: Sequence[Feed]) -> list:
        results: list = [None] * len(requests)
        pairs: dict[int, tuple[_Row, _Row, np.ndarray | None, int]] = {}
        for index, feed in enumerate(requests):
            try:
                pairs[index] = self._match_rows(index, feed)
                self._check_request_memory([*pairs[index][0], *pairs[index][1]])
            except DitfError as exc:
                pairs.pop(index, None)
                results[index] = exc
        self._run_rows([row for pair in pairs.values() for rows in pair[:2] for row in rows], results)
        for index, (src_rows, trg_rows, points, max_matches) in pairs.items():
            if results[index] is not None:
                continue
            src, trg = (self._feature_map(rows) for rows in (src_rows, trg_rows))
            try:
                if points is None:
                    cells, _, _ = mutual_nn_matches(src, trg)
                    points = cell_centers(cells[:max_matches], src.grid_size, src.image_size)
                target, scores = transfer_keypoints(src, trg, points, return_scores=True)
            except DitfError as exc:
                results[index] = exc
                continue
            results[index] = {
                "source_points": np.asarray(points, dtype=np.int64).reshape(1, -1, 2),
                "target_points": np.asarray(target, dtype=np.int64).reshape(1, -1, 2),
                "scores": np.asarray(scores, dtype=np.float32).reshape(1, -1),
                ERROR_OUTPUT: error_column(1),
            }
        return results

    def _match_rows(self, index: int, feed: Feed):
        for name in ("source", "target"):
            if feed.get(name) is None:
                raise InputError(f"a match request needs 'source' and 'target' (uint8 [1, H, W, 3]); {name!r} is missing")
        batch = batch_size(feed)
        if batch != 1:
            raise InputError(f"send one pair per match request (batch 1), got {batch}; the server batches requests")
        seed, ensemble, size = (read_option(feed, name, 1)[0] for name in ("seed", "ensemble", "size"))
        max_matches = read_option(feed, "max_matches", 1)[0]
        max_matches = DEFAULT_MAX_MATCHES if max_matches is None else max_matches
        if max_matches < 1:
            raise InputError(f"max_matches must be >= 1, got {max_matches}")
        points = feed.get("points")
        if points is not None:
            points = read_array(feed, "points", np.int64, 3)[0]
        rows = []
        for name in ("source", "target"):
            image = read_array(feed, name, np.uint8, 4)[0]
            image_rows = []
            for k, member in enumerate(self.members):
                pixels, image_size = self._prepare(member, image, size)
                image_rows.append(_Row(index, pixels, self._noise(member, pixels, None, 0, seed, ensemble), image_size,
                                       model=k))
            rows.append(image_rows)
        return rows[0], rows[1], points, max_matches

    def _feature_map(self, rows: Sequence[_Row]) -> FeatureMap:
        features, input_size, image_size = self._image_features(rows)
        return FeatureMap(features, image_size, input_size, input_size[0] // features.shape[-2])

    # -- failures inside a batch --------------------------------------------------------------
    def failure_response(self, task: str, feed: Feed, error: Exception) -> dict[str, np.ndarray]:
        """Placeholder outputs carrying `error`, for a host that can only fail whole batches (PyTriton).

        One cell of NaN features / (-1, -1) points rather than empty arrays, which PyTriton
        cannot serialise; a client that ignores `error` still cannot mistake them for results.
        """
        try:
            batch = batch_size(feed)
        except DitfError:
            batch = 1
        message = f"{type(error).__name__}: {error}"
        if task == MATCH_MODEL:
            outputs = {
                "source_points": np.full((1, 1, 2), -1, dtype=np.int64),
                "target_points": np.full((1, 1, 2), -1, dtype=np.int64),
                "scores": np.full((1, 1), np.nan, dtype=np.float32),
            }
            batch = 1
        else:
            outputs = {
                "features": np.full((batch, self.feature_channels, 1, 1), np.nan, dtype=np.float32),
                "image_size": np.zeros((batch, 2), dtype=np.int64),
                "input_size": np.zeros((batch, 2), dtype=np.int64),
            }
        outputs[ERROR_OUTPUT] = error_column(batch, message)
        return outputs

    # -- running ---------------------------------------------------------------------------------
    def _check_request_memory(self, rows: Sequence[_Row]) -> None:
        """A fused request: each model's largest call for it (its rows batched up to max_batch_size), together."""
        if self.check_memory is None:
            return
        from ..memory import RunShape

        runs = []
        for k, member in enumerate(self.members):
            mine = [row for row in rows if row.model == k]
            if mine:
                big = max(mine, key=lambda row: row.pixels.shape[1] * row.pixels.shape[2])
                ensemble = 1 if big.noise is None else big.noise.shape[0]
                shape = RunShape(min(len(mine), self.max_batch_size), ensemble, *big.pixels.shape[1:3])
                runs.append((member.manifest, shape.for_graph(member.graph)))
        if runs:
            self.check_memory(runs)

    def _run_rows(self, rows: list[_Row], results: list) -> None:
        """Fill row.features, same-shape rows max_batch_size at a time; a failed run fails its requests.

        A fused pipeline runs each model's rows on its own thread, so the two graphs overlap.
        """
        groups: dict[tuple, list[_Row]] = {}
        for row in rows:
            groups.setdefault(row.key, []).append(row)
        per_model: dict[int, list[list[_Row]]] = {}
        for key, group in groups.items():
            per_model.setdefault(key[0], []).append(group)
        if len(per_model) < 2:
            for model_groups in per_model.values():
                self._run_groups(model_groups, results)
            return
        with ThreadPoolExecutor(len(per_model), thread_name_prefix="ditf-serve-fuse") as pool:
            for future in [pool.submit(self._run_groups, g, results) for g in per_model.values()]:
                future.result()

    def _run_groups(self, groups: list[list[_Row]], results: list) -> None:
        for group in groups:
            for start in range(0, len(group), self.max_batch_size):
                chunk = group[start : start + self.max_batch_size]
                noise = None if chunk[0].noise is None else np.stack([r.noise for r in chunk])
                try:
                    features = self.members[chunk[0].model].run(np.stack([r.pixels for r in chunk]), noise)
                except DitfError as exc:
                    error: DitfError | None = exc
                except Exception as exc:  # noqa: BLE001 - report, don't take the server down
                    error = BackendError(f"the graph failed: {type(exc).__name__}: {exc}")
                else:
                    error = None
                    for i, row in enumerate(chunk):
                        row.features = np.asarray(features[i], dtype=np.float32)
                if error is not None:
                    for row in chunk:
                        results[row.request] = results[row.request] or error


def _by_image(rows: Sequence[_Row], models: int) -> list[Sequence[_Row]]:
    """A request's rows (image by image, one per model) grouped per image."""
    return [rows[start : start + models] for start in range(0, len(rows), models)]
