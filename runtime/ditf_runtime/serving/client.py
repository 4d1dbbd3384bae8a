"""A client for the served `extract` and `match` models (tritonclient, HTTP or gRPC).

    with FeatureClient("http://127.0.0.1:8000") as client:      # or "grpc://127.0.0.1:8001"
        src, trg = client.extract(["a.jpg", "b.jpg"])           # FeatureMaps, as ditf_runtime.load(...).extract
        match = client.match("a.jpg", "b.jpg", points=[[120, 80]])

Images are read here (EXIF orientation applied, like local extraction) and sent as uint8 RGB;
the server preprocesses them and draws the default noise from the preprocessed pixels, so the
arrays equal local extraction's for the same image, seed and noise. Each image is its own
request, sent `concurrency` at a time, so the server's dynamic batcher can group them.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, DitfError, ImageError, InputError
from ..features import FeatureMap
from ..jobs import FolderReport, Job, collect_jobs, pending_jobs, save_job
from ..preprocess import DEFAULT_MAX_PIXELS, ImageSource, as_image_list, describe, open_image
from ..storage import output_suffix
from .protocol import ERROR_OUTPUT, EXTRACT_MODEL, MATCH_MODEL

TRITONCLIENT_MISSING = "tritonclient is not installed: `pip install 'ditf-runtime[client]'` (or '[serve]')"


class ServerError(DitfError):
    """The server refused or failed a request; the message is the server's reason."""


class ServerUnavailable(ServerError, BackendError):
    """The server cannot be reached, or went away during a request."""


@dataclass(frozen=True)
class Match:
    source_points: np.ndarray  # [N, 2] int64 pixel (x, y) in the source image
    target_points: np.ndarray  # [N, 2] int64 pixel (x, y) in the target image
    scores: np.ndarray  # [N] cosine similarity at the target pixel


def _import_protocol(scheme: str):
    try:
        if scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype
    except ImportError as exc:
        raise BackendError(TRITONCLIENT_MISSING) from exc
    return module, InferenceServerException, np_to_triton_dtype


def parse_url(url: str) -> tuple[str, str]:
    """'http://host:port' / 'grpc://host:port' / 'host:port' (http) -> (scheme, 'host:port')."""
    match = re.fullmatch(r"(?:(http|grpc)://)?([^/\s]+:\d+)/?", url.strip())
    if not match:
        raise InputError(f"server URL {url!r} must look like http://HOST:PORT or grpc://HOST:PORT")
    return match.group(1) or "http", match.group(2)


def server_reason(text: str) -> str:
    """The useful line of a server error: the exception line of a PyTriton traceback, else the text."""
    text = text.strip()
    if "Traceback" in text:
        lines = [line.strip() for line in text.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception)\b", line)]
        if lines:
            return re.sub(r"^(?:[a-z_][\w]*\.)+", "", lines[-1])  # ditf_runtime.errors.InputError -> InputError
    return text


class FeatureClient:
    """Talks to `ditf serve` or to a Triton serving a `ditf triton-repo` repository."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout_s: float = 120.0, concurrency: int = 4) -> None:
        self.url = url
        self.scheme, self.address = parse_url(url)
        self.timeout_s = float(timeout_s)
        if concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = int(concurrency)
        self._module, self._exception, self._dtype_name = _import_protocol(self.scheme)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.scheme == "grpc":
                client = self._module.InferenceServerClient(self.address)
            else:
                client = self._module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except self._exception as exc:
            message = exc.message() if hasattr(exc, "message") else str(exc)
            status = str(exc.status() or "") if hasattr(exc, "status") else ""
            if "UNAVAILABLE" in status or "failed to connect" in str(message).lower():
                raise ServerUnavailable(f"{what}: the server at {self.url} is unavailable ({message})") from None
            raise ServerError(f"{what}: {server_reason(str(message))}") from None
        except (OSError, EOFError, http.client.HTTPException) as exc:  # refused, reset, closed, timed out (HTTP)
            raise ServerUnavailable(
                f"{what}: the server at {self.url} is unavailable ({type(exc).__name__}: {exc}); is `ditf serve` running?"
            ) from None

    def is_ready(self) -> bool:
        try:
            return bool(self._client().is_server_ready()) and all(
                self._client().is_model_ready(name) for name in (EXTRACT_MODEL, MATCH_MODEL)
            )
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"the server at {self.url} was not ready within {timeout_s:.0f} s")
            time.sleep(0.2)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """One raw request: {input name: array with the batch axis} -> {output name: array}."""
        module = self._module
        feed = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            if array.ndim == 0 or array.shape[0] == 0:
                raise InputError(f"empty batch: input {name!r} has shape {array.shape}; send at least one row")
            dtype = self._dtype_name(array.dtype)
            if dtype is None:
                raise InputError(f"input {name!r} has dtype {array.dtype}, which Triton cannot carry")
            item = module.InferInput(name, list(array.shape), dtype)
            if self.scheme == "grpc":
                item.set_data_from_numpy(array)
            else:
                item.set_data_from_numpy(array, binary_data=True)
            feed.append(item)
        if self.scheme == "grpc":
            wanted = [module.InferRequestedOutput(name) for name in outputs]
            kwargs = {"client_timeout": self.timeout_s}
        else:
            wanted = [module.InferRequestedOutput(name, binary_data=True) for name in outputs]
            kwargs = {}
        result = self._call(model, self._client().infer, model, feed, outputs=wanted, **kwargs)
        out = {name: result.as_numpy(name) for name in outputs}
        for reason in np.ravel(out.get(ERROR_OUTPUT, [])):
            if reason:
                raise ServerError(f"{model}: {server_reason(_text(reason))}")
        return out

    def _map(self, function, items: list) -> list:
        if len(items) <= 1 or self.concurrency == 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(function, items))

    # -- extract ---------------------------------------------------------------------------------
    def extract(
        self,
        images: ImageSource | Sequence[ImageSource],
        size: int | None = None,
        ensemble: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | Sequence[np.ndarray] | None = None,
        *,
        exif_transpose: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> list[FeatureMap]:
        """Features of images (paths, PIL images, uint8 HxWx3 arrays), as Extractor.extract returns them.

        `noise` is a list of per-image [E, c, H/8, W/8] arrays (or one [B, E, ...] array);
        otherwise the server draws the default noise from `seed` (0) and the image's pixels.
        """
        sources = as_image_list(images)
        if noise is not None:
            if seed is not None:
                raise InputError("pass either noise= or seed=, not both (seed only draws default noise)")
            noise = list(noise)
            if len(noise) != len(sources):
                raise InputError(f"got {len(noise)} noise arrays for {len(sources)} image(s)")

        def one(index: int) -> FeatureMap:
            source = sources[index]
            array = np.asarray(open_image(source, exif_transpose=exif_transpose, max_pixels=max_pixels))
            inputs = {"image": array[None]}
            inputs.update(_options(size=size, ensemble=ensemble, seed=seed))
            if noise is not None:
                inputs["noise"] = np.asarray(noise[index], dtype=np.float32)[None]
            out = self.infer(EXTRACT_MODEL, inputs, ("features", "image_size", "input_size", ERROR_OUTPUT))
            return _feature_map(out, 0, describe(source))

        return self._map(one, list(range(len(sources))))

    def extract_pixels(
        self,
        pixels: np.ndarray,
        noise: np.ndarray | None = None,
        seed: int | None = None,
        ensemble: int | None = None,
    ) -> np.ndarray:
        """Features [B, C, h, w] of preprocessed float32 [B, 3, H, W] pixels (one request), like Extractor.run."""
        inputs = {"pixels": pixels}
        if noise is not None:
            inputs["noise"] = noise
        inputs.update(_options(ensemble=ensemble, seed=seed, batch=len(pixels)))
        return self.infer(EXTRACT_MODEL, inputs, ("features", ERROR_OUTPUT))["features"]

    # -- match -----------------------------------------------------------------------------------
    def match(
        self,
        source: ImageSource,
        target: ImageSource,
        points: Any = None,
        *,
        max_matches: int | None = None,
        size: int | None = None,
        ensemble: int | None = None,
        seed: int | None = None,
        exif_transpose: bool = True,
    ) -> Match:
        """Transfer `points` ([N, 2] source pixels (x, y)) or list mutual nearest neighbours, server-side."""
        inputs = {
            name: np.asarray(open_image(image, exif_transpose=exif_transpose))[None]
            for name, image in (("source", source), ("target", target))
        }
        if points is not None:
            points = np.asarray(points)
            if points.ndim != 2 or points.shape[1:] != (2,):
                raise InputError(f"points must be [N, 2] pixel (x, y), got shape {points.shape}")
            inputs["points"] = points.astype(np.int64)[None]
        inputs.update(_options(size=size, ensemble=ensemble, seed=seed, max_matches=max_matches))
        out = self.infer(MATCH_MODEL, inputs, ("source_points", "target_points", "scores", ERROR_OUTPUT))
        return Match(out["source_points"][0], out["target_points"][0], out["scores"][0])


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _options(batch: int = 1, **values: int | None) -> dict[str, np.ndarray]:
    return {name: np.full((batch, 1), int(v), dtype=np.int64) for name, v in values.items() if v is not None}


def _feature_map(out: dict[str, np.ndarray], row: int, name: str | None) -> FeatureMap:
    features = out["features"][row : row + 1]
    input_size = tuple(int(v) for v in out["input_size"][row])
    stride = input_size[0] // features.shape[2]
    return FeatureMap(features, out["image_size"][row], input_size, stride, name)


# -- writing a folder of features through a server ----------------------------------------------


def extract_folder(
    client: FeatureClient,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    fmt: str = "safetensors",
    size: int | None = None,
    ensemble: int | None = None,
    seed: int | None = None,
    exif_transpose: bool = True,
    overwrite: bool = False,
) -> FolderReport:
    """Extract images and folders through the server into OUT, in `ditf extract`'s layout and format.

    Each output is written atomically as its response arrives, so a rerun skips what exists and
    a server that dies mid-run leaves only complete files (ServerUnavailable is raised once the
    requests in flight have settled). Unreadable images are reported, not fatal.
    """
    out_dir = Path(out_dir)
    jobs = collect_jobs(inputs, out_dir, output_suffix(fmt))
    pending = pending_jobs(jobs, overwrite)
    failed: list[str] = []
    lost: list[ServerError] = []

    def one(job: Job) -> bool:
        if lost:  # the server is gone: don't queue more requests against it
            return False
        try:
            (features,) = client.extract([job.image], size, ensemble, seed, exif_transpose=exif_transpose)
        except ServerUnavailable as exc:
            lost.append(exc)
            return False
        except (ImageError, ServerError) as exc:  # this image only: unreadable, or refused by the server
            failed.append(f"{job.image}: {exc}")
            return False
        save_job(job, features, fmt, metadata={})
        return True

    if pending:
        out_dir.mkdir(parents=True, exist_ok=True)
    written = sum(client._map(one, pending))
    if lost:
        raise ServerUnavailable(f"{lost[0]} -- {written} of {len(pending)} image(s) were written before that")
    return FolderReport(len(jobs), len(jobs) - len(pending), written, tuple(failed))
