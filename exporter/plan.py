"""Step 1 of an export: the request (request.py), resolved and validated into a frozen plan before any
heavy work.

`plan()` resolves the model and every default, checks all user input, reads the graph's shapes from the
configs, and returns one `ExportPlan`. Later steps never change it; a derived plan (after `--discard auto`
detection) is a `dataclasses.replace` of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ditf_calib.graph_io import FRAMES, NOISE, GraphIO
from ditf_calib.split import ImageSplit
from ditf_runtime.precision import Precision

from .catalog import adapter_for
from .errors import ExportInputError
from .families.base import ExportOptions, FamilyAdapter
from .loading import ModelSource, read_vae_config, resolve_source
from .request import NOT_GIVEN, PARITY_GRIDS, ExportRequest


@dataclass(frozen=True)
class ExportPlan:
    """What the export will do, resolved and validated; built once by plan()."""

    source: ModelSource
    adapter: FamilyAdapter
    options: ExportOptions
    io: GraphIO  # the graph's tensors and geometry, from the transformer's and the VAE's configs
    precision: Precision
    ensemble: int  # the runtime's default E
    image_size: int  # the runtime's default long side
    discard_source: str  # "registry" | "user" | "auto" | "none"
    parity_sizes: tuple[tuple[int, int], ...]
    notes: tuple[str, ...] = ()
    prompt_embeds_file: Path | None = None
    calib_images: Path | None = None
    massive_threshold: float = 100.0
    int8_convs: bool = False
    image_split: ImageSplit | None = None  # int8: calibration vs held-out images
    calib_sizes: tuple[int, ...] = ()  # int8: long sides calibrated at
    calib_method: str = "max"
    calib_percentile: float = 99.99
    semantic_pairs: int = 0  # trained models (flux-mini): held-out creature pairs judged by ground truth

    @property
    def block(self) -> str:
        return self.adapter.feature_name(self.source.transformer_config, self.options)

    def with_discard(self, channels: tuple[int, ...], note: str) -> "ExportPlan":
        """The plan after `--discard auto` found its channels."""
        return replace(self, options=replace(self.options, discard=tuple(channels)), notes=(*self.notes, note))


def plan(request: ExportRequest) -> ExportPlan:
    """Resolve the model and every default, and validate all user input, before any heavy work."""
    request.check()
    source = resolve_source(request.model)
    adapter = adapter_for(source.family)
    config, spec = source.transformer_config, source.spec
    notes: list[str] = []
    if spec is None:
        notes.append(f"no registry defaults apply to this model ({source.defaults_rule}): "
                     "no default discard channels; pass --discard or --discard auto")
    layer = _choose(request.layer, spec, "layer", adapter.default_layer(config))
    if layer is None:
        raise ExportInputError(f"--layer is required for {source.name} (no registry default); valid: "
                               f"0..{adapter.num_layers(config) - 1}")
    adapter.check_layer(config, int(layer))
    io = adapter.graph_io(config, read_vae_config(source) if adapter.needs_vae else None)
    noisy = io.input(NOISE) is not None
    if noisy:
        timestep = _choose(request.timestep, spec, "timestep", 260)
        ensemble = int(_choose(request.ensemble, spec, "ensemble", 8))
        if ensemble < 1:
            raise ExportInputError("--ensemble must be >= 1")
    else:
        _refuse_noise_options(request, source.family)
        timestep, ensemble = None, 1
    guidance = _guidance(request, source, adapter, notes)
    discard, discard_source = _discard(request, source, adapter.hidden_size(config), notes)
    image_size = _image_size(request, spec, io, adapter.default_image_size, notes)
    final_norm = request.layer is None and adapter.default_final_norm
    head = _head(request, source, adapter)
    options = _options(request, source, adapter, layer, timestep, discard, guidance, image_size, final_norm, noisy,
                       head)
    _check_precision(request, source, io, discard_source, notes)
    split, calib_sizes = _int8_data(request, io, image_size, notes)
    return ExportPlan(
        source=source, adapter=adapter, options=options, io=io, precision=request.precision, ensemble=ensemble,
        image_size=image_size, discard_source=discard_source, parity_sizes=_parity_sizes(request, io),
        notes=tuple(notes), prompt_embeds_file=request.prompt_embeds, calib_images=request.calib_images,
        massive_threshold=request.massive_threshold, int8_convs=request.int8_convs, image_split=split,
        calib_sizes=calib_sizes, calib_method=request.calib_method, calib_percentile=float(request.calib_percentile),
        semantic_pairs=_semantic_pairs(request, source),
    )


def _semantic_pairs(request: ExportRequest, source) -> int:
    from .semantic_gate import DEFAULT_PAIRS

    if not source.trained_on:
        return 0
    pairs = DEFAULT_PAIRS if request.semantic_pairs is None else int(request.semantic_pairs)
    if pairs < 0:
        raise ExportInputError(f"semantic_pairs must be >= 0, got {pairs}")
    return pairs


def parse_discard(text: str, hidden: int) -> tuple[int, ...]:
    try:
        channels = tuple(sorted({int(c) for c in text.split(",") if c.strip()}))
    except ValueError as exc:
        raise ExportInputError(f"--discard {text!r}: expected a comma list of channel indices, 'none' or 'auto'") from exc
    bad = [c for c in channels if not 0 <= c < hidden]
    if bad:
        raise ExportInputError(f"--discard: channels {bad} are outside this model's hidden size 0..{hidden - 1}")
    return channels


def _choose(given: Any, spec, attr: str, fallback: Any) -> Any:
    """The user's value if given, else the registry's default, else the family fallback."""
    if given is not None:
        return given
    default = getattr(spec, attr, None) if spec is not None else None
    return fallback if default is None or default.value is None else default.value


def _refuse_noise_options(request: ExportRequest, family: str) -> None:
    """A graph without a noise input has no timestep and no ensemble to choose."""
    for value, flag in ((request.timestep, "--timestep"), (request.ensemble, "--ensemble")):
        if value is not None:
            raise ExportInputError(f"{flag}: {family} graphs take no noise (not a diffusion model); drop {flag}")


def _guidance(request: ExportRequest, source: ModelSource, adapter: FamilyAdapter, notes: list[str]) -> float | None:
    if request.guidance is not NOT_GIVEN:
        return request.guidance  # a number, or None: explicitly no guidance
    spec = source.spec
    if spec is not None and spec.guidance is not None:
        return spec.guidance.value
    default = adapter.default_guidance(source.transformer_config)
    if default is None:
        return None
    notes.append(f"guidance {default.value:g} ({default.source}) used: the model has a guidance embedding")
    return default.value


def _discard(request: ExportRequest, source: ModelSource, hidden: int,
             notes: list[str]) -> tuple[tuple[int, ...], str]:
    if request.discard is None:
        spec = source.spec
        if spec is None:
            return (), "none"
        channels = tuple(spec.discard.value)
        if channels and spec.hidden_size is not None and hidden != spec.hidden_size:
            # massive channels are indices into one width: another width's list would zero arbitrary channels
            notes.append(f"{spec.name}'s discard channels {list(channels)} belong to its hidden size "
                         f"{spec.hidden_size}; this model has {hidden}: none discarded (pass --discard or "
                         "--discard auto)")
            return (), "none"
        if any(not 0 <= c < hidden for c in channels):
            raise ExportInputError(f"discard channels {channels} are outside this model's hidden size {hidden}")
        return channels, "registry"
    if request.discard == "none":
        return (), "none"
    if request.discard == "auto":  # request.check() made sure --calib-images is given
        return (), "auto"  # detected after loading (build.detect_discard)
    return parse_discard(request.discard, hidden), "user"


def _head(request: ExportRequest, source: ModelSource, adapter: FamilyAdapter) -> str:
    """The feature head: the user's --head, else "adaln"; "none" for families without an AdaLN head."""
    if not adapter.adaln_head:
        if request.head is not None:
            raise ExportInputError(f"--head {request.head}: {source.family} features have no AdaLN modulation to "
                                   "keep or leave out (--head is for diffusion transformers); drop --head")
        return "none"
    return request.head or "adaln"


def _image_size(request: ExportRequest, spec, io: GraphIO, fallback: int, notes: list[str]) -> int:
    size, multiple = int(_choose(request.image_size, spec, "image_size", fallback)), io.size_multiple
    if size % multiple or size < multiple:
        raise ExportInputError(f"--image-size {size}: must be a positive multiple of {multiple}")
    limit = io.geometry.max_size
    if limit is not None and size > limit:
        if request.image_size is not None:
            raise ExportInputError(f"--image-size {size}: {_limit_text(io)}; use --image-size {limit} or less")
        notes.append(f"default image size {size} lowered to {limit}: {_limit_text(io)}")
        size = limit
    return size


def _limit_text(io: GraphIO) -> str:
    g = io.geometry
    return (f"this graph is verified for sides up to {g.max_size} pixels (its position tables cover token grids "
            f"up to {g.max_size // g.feature_stride} per side at stride {g.feature_stride})")


def _parity_sizes(request: ExportRequest, io: GraphIO) -> tuple[tuple[int, int], ...]:
    m, limit = io.size_multiple, io.geometry.max_size
    if request.parity_sizes is None:
        return tuple((rows * m, cols * m) for rows, cols in PARITY_GRIDS)
    for h, w in request.parity_sizes:
        if h % m or w % m or min(h, w) < m:
            raise ExportInputError(f"parity size {h}x{w}: sides must be positive multiples of {m}")
        if limit is not None and max(h, w) > limit:
            raise ExportInputError(f"parity size {h}x{w}: {_limit_text(io)}")
    return tuple((int(h), int(w)) for h, w in request.parity_sizes)


def _options(request: ExportRequest, source: ModelSource, adapter: FamilyAdapter, layer, timestep,
             discard: tuple[int, ...], guidance: float | None, image_size: int, final_norm: bool,
             noisy: bool, head: str) -> ExportOptions:
    """The baked conditioning, checked by the family (which may fill in its own defaults)."""
    prompt_embeds = None
    if request.prompt_embeds is not None:
        from .text import load_prompt_embeds

        prompt_embeds = load_prompt_embeds(request.prompt_embeds)
    spec, config = source.spec, source.transformer_config
    options = adapter.check_options(config, ExportOptions(
        layer=int(layer), timestep=None if timestep is None else float(timestep), discard=tuple(discard),
        guidance=guidance, prompt=None if prompt_embeds is not None else (request.prompt or ""),
        prompt_embeds=prompt_embeds, class_label=request.class_label, image_size=image_size,
        text_max_length=request.text_max_length or (spec.text_max_length if spec is not None else None),
        final_norm=final_norm, head=head,
    ))
    options = replace(options, head=head)  # generic: kept whatever the family's check_options rebuilt
    if noisy:
        adapter.noise_coefficients(source, options)  # the timestep must fit the family's noise schedule
    if prompt_embeds is not None:  # check shapes now, not after loading the transformer
        adapter.conditioning(source, config, options)
    return options


def _check_precision(request: ExportRequest, source: ModelSource, io: GraphIO, discard_source: str,
                     notes: list[str]) -> None:
    precision = request.precision
    if io.has_axis(FRAMES) and precision.is_calibrated:
        # bf16/fp16 of video graphs are checked against diffusers (docs/video.md); calibrating on clips is not
        raise ExportInputError(f"--precision {precision}: video families ({source.family}) export fp32, bf16 or fp16 "
                               "in this build; use --precision bf16")
    if request.calib_images is not None and precision == Precision.FP32 and discard_source != "auto":
        notes.append("--calib-images ignored: fp32 needs no calibration")


def _int8_data(request: ExportRequest, io: GraphIO, image_size: int,
               notes: list[str]) -> tuple[ImageSplit | None, tuple[int, ...]]:
    """INT8 / FP8: which images calibrate and which judge (ditf_calib.split), and the calibration sizes."""
    from ditf_calib.data import CalibrationError
    from ditf_calib.split import split_images
    from ditf_calib.qformat import FP8
    from ditf_calib.stats import METHODS

    if request.calib_method not in METHODS:
        raise ExportInputError(f"--calib-method {request.calib_method!r}: choose one of {', '.join(METHODS)}")
    if not 0 < request.calib_percentile <= 100:
        raise ExportInputError(f"--calib-percentile {request.calib_percentile}: must be in (0, 100], e.g. 99.99")
    if not request.precision.is_calibrated:
        if request.eval_images is not None or request.calib_sizes or request.calib_method != "max":
            raise ExportInputError("--eval-images, --calib-sizes and --calib-method apply to --precision int8 and "
                                   "fp8 only")
        return None, ()
    if request.precision == Precision.FP8 and request.calib_method not in FP8.methods:
        raise ExportInputError(f"--calib-method {request.calib_method} searches int8's evenly spaced levels; "
                               f"--precision fp8 takes --calib-method {' or '.join(FP8.methods)}")
    sizes = tuple(int(s) for s in (request.calib_sizes or (image_size,)))
    limit, m = io.geometry.max_size, io.size_multiple
    for side in sizes:
        if side % m or side < m or (limit is not None and side > limit):
            raise ExportInputError(f"--calib-sizes {side}: a long side must be a positive multiple of {m}"
                                   + (f" up to {limit}" if limit is not None else ""))
    if image_size not in sizes:
        notes.append(f"{request.precision} calibrated at long sides {list(sizes)}, not the default {image_size} it "
                     "is judged at")
    try:
        split = split_images(request.calib_images, request.eval_images)
    except CalibrationError as exc:
        raise ExportInputError(str(exc)) from None
    _note_small_images(split, min(sizes), notes)
    return split, sizes


def _note_small_images(split: ImageSplit, side: int, notes: list[str]) -> None:
    """Images far smaller than the size they are calibrated at are upscaled: blurrier than what users feed."""
    from PIL import Image

    small = []
    for path in split.calibration:
        with Image.open(path) as img:
            if 2 * max(img.size) < side:
                small.append(f"{path.name} {img.size[0]}x{img.size[1]}")
    if small:
        notes.append(f"int8 calibration images upscaled more than 2x to long side {side}: {', '.join(small)}; "
                     "calibrate on photos at least as large as the size the graph runs at")
