"""Server-side request handling, shared by `ditf serve` (PyTriton) and the Triton python-backend
model that `ditf triton-repo` writes: requests in, per-request responses or errors out.

Each request is checked on its own (request_checks.py: a malformed one gets its own error), then the
rows of all valid requests are grouped by (model, model input size, E) and run `max_batch_size` at a
time through that model's `run(image, noise) -> features`: `Extractor.run` in-process, or a BLS call to
the graph model inside Triton. Preprocessing and default noise are the runtime's own (preprocess.prepare,
noise.default_noise), so a served image gets exactly the arrays local extraction feeds the graph.

A fused pipeline (`FeaturePipeline.fused`, two exports) prepares every image once per model, runs
both graphs and fuses the two maps (fusion.fuse_arrays), so a served image gets exactly the fused map
of `ditf_runtime.load(a, b).extract`. It takes uint8 images only: 'pixels', 'noise' and 'size' are
one model's inputs, and each fused model keeps its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

from ..errors import BackendError, DitfError, InputError
from ..features import FeatureMap
from ..fusion import MODELS, check_weights, fuse_arrays
from ..manifest import Manifest
from ..matching import cell_centers, mutual_nn_matches, transfer_keypoints
from ..preprocess import DEFAULT_MAX_PIXELS
from .admission import Admission
from .protocol import ERROR_OUTPUT, EXTRACT_MODEL, MATCH_MODEL, Feed, batch_size, error_column
from .request_checks import MatchRows, Member, RequestChecks, Row, Run

# memory.check_runs with the server's budget: refuses graph calls that would not fit together
MemoryCheck = Callable[[list], object]


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
        graph=None,
        admission: Admission | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.members = (Member(manifest, run, fixed_ensemble, graph),)
        self.weights: tuple[float, ...] | None = None  # fused pipelines only
        self.max_batch_size = int(max_batch_size)
        self.max_pixels = max_pixels
        self.check_memory: MemoryCheck | None = None  # fused pipelines: both graphs' calls together
        # The server's one memory account (admission.py): every graph call reserves its estimate while it runs,
        # so calls on Triton's threads (extract, match, a fused pair's two graphs) never overrun it together.
        self.admission = admission

    @classmethod
    def fused(cls, members: Sequence[Member], weights: Sequence[float], *, max_batch_size: int = 8,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, check_memory: MemoryCheck | None = None,
              admission: Admission | None = None) -> "FeaturePipeline":
        """Two exports' fused features (fusion.py): each image prepared and run once per model.

        The two graphs run at once (two threads), so each member's own memory check does not see the other's
        share: `check_memory` (memory.check_runs with the budget) refuses a request whose two calls would
        not fit together; the server stays up for the others.
        """
        if len(members) != MODELS:
            raise InputError(f"a fused pipeline takes exactly {MODELS} exports, got {len(members)}")
        pipeline = cls(members[0].manifest, members[0].run, max_batch_size=max_batch_size,
                       fixed_ensemble=members[0].fixed_ensemble, max_pixels=max_pixels, admission=admission)
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

    def _request_checks(self) -> RequestChecks:
        check_call = self._check_call if self.check_memory is not None or self.admission is not None else None
        return RequestChecks(self.members, self.weights is not None, self.max_pixels, check_call)

    def _check_call(self, member: Member, size: tuple[int, int], ensemble: int) -> None:
        """One image's call at model size (H, W): refused before the image is resized when it could never fit."""
        from ..memory import RunShape

        runs = [(member.manifest, RunShape(1, ensemble, *size).for_graph(member.graph))]
        for check in (self.check_memory, self.admission and self.admission.check):
            if check is not None:
                check(runs)

    # -- extract ---------------------------------------------------------------------------------
    def extract(self, requests: Sequence[Feed]) -> list:
        results: list = [None] * len(requests)
        rows: dict[int, list[Row]] = {}
        checks = self._request_checks()
        for index, feed in enumerate(requests):
            try:
                rows[index] = checks.extract_rows(index, feed)
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

    def _image_features(self, rows: Sequence[Row]) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """(features [C, h, w], input size, image size) of one image from its row per model."""
        if self.weights is None:
            row = rows[0]
            return row.features, row.pixels.shape[1:], row.image_size
        features, finer = fuse_arrays([row.features for row in rows], self.weights)
        return features, rows[finer].pixels.shape[1:], rows[0].image_size

    # -- match -----------------------------------------------------------------------------------
    def match(self, requests: Sequence[Feed]) -> list:
        results: list = [None] * len(requests)
        pairs: dict[int, MatchRows] = {}
        checks = self._request_checks()
        for index, feed in enumerate(requests):
            try:
                pairs[index] = checks.match_rows(index, feed)
                self._check_request_memory([*pairs[index].source, *pairs[index].target])
            except DitfError as exc:
                pairs.pop(index, None)
                results[index] = exc
        self._run_rows([row for pair in pairs.values() for row in (*pair.source, *pair.target)], results)
        for index, pair in pairs.items():
            if results[index] is not None:
                continue
            src, trg = self._feature_map(pair.source), self._feature_map(pair.target)
            points = pair.points
            try:
                if points is None:
                    cells, _, _ = mutual_nn_matches(src, trg)
                    points = cell_centers(cells[:pair.max_matches], src.grid_size, src.image_size)
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

    def _feature_map(self, rows: Sequence[Row]) -> FeatureMap:
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
    def _check_request_memory(self, rows: Sequence[Row]) -> None:
        """A request's largest call per model (its rows batched up to max_batch_size), all models together:
        refused before anything runs when it could never fit (fused pipelines, and any with an admission)."""
        if self.check_memory is None and self.admission is None:
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
            for check in (self.check_memory, self.admission and self.admission.check):
                if check is not None:
                    check(runs)

    def _admitted(self, member: Member, chunk: Sequence[Row]):
        """The graph call's reservation in the server's memory account (nothing to hold without one)."""
        if self.admission is None:
            return nullcontext()
        return self.admission.hold([(member.manifest, _call_shape(member, chunk))])

    def _run_rows(self, rows: list[Row], results: list) -> None:
        """Fill row.features, same-shape rows max_batch_size at a time; a failed run fails its requests.

        A fused pipeline runs each model's rows on its own thread, so the two graphs overlap.
        """
        groups: dict[tuple, list[Row]] = {}
        for row in rows:
            groups.setdefault(row.key, []).append(row)
        per_model: dict[int, list[list[Row]]] = {}
        for key, group in groups.items():
            per_model.setdefault(key[0], []).append(group)
        if len(per_model) < 2:
            for model_groups in per_model.values():
                self._run_groups(model_groups, results)
            return
        with ThreadPoolExecutor(len(per_model), thread_name_prefix="ditf-serve-fuse") as pool:
            for future in [pool.submit(self._run_groups, g, results) for g in per_model.values()]:
                future.result()

    def _run_groups(self, groups: list[list[Row]], results: list) -> None:
        for group in groups:
            for start in range(0, len(group), self.max_batch_size):
                chunk = group[start : start + self.max_batch_size]
                noise = None if chunk[0].noise is None else np.stack([r.noise for r in chunk])
                member = self.members[chunk[0].model]
                try:
                    with self._admitted(member, chunk):
                        features = member.run(np.stack([r.pixels for r in chunk]), noise)
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


def _call_shape(member: Member, chunk: Sequence[Row]):
    from ..memory import RunShape

    ensemble = 1 if chunk[0].noise is None else chunk[0].noise.shape[0]
    return RunShape(len(chunk), ensemble, *chunk[0].pixels.shape[1:3]).for_graph(member.graph)


def _by_image(rows: Sequence[Row], models: int) -> list[Sequence[Row]]:
    """A request's rows (image by image, one per model) grouped per image."""
    return [rows[start : start + models] for start in range(0, len(rows), models)]
