"""Find a model (registry name, local diffusers folder, or HF id in the local cache) and load only what
layer K needs: a truncated transformer config, and only the kept blocks' tensors from the shards."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import catalog
from .errors import ExportInputError
from .families.base import FamilyAdapter
from .registry import RANDOM_WEIGHTS_KEY, RECIPE_KEY, TRAINED_ON_KEY, ModelSpec

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


@dataclass(frozen=True)
class ModelSource:
    name: str  # registry name, or the folder / HF id as given
    path: Path  # local pipeline folder: model_index.json, transformer/, vae/, ...
    family: str
    spec: ModelSpec | None  # registry entry whose defaults apply, if any
    transformer_config: dict[str, Any]
    defaults_rule: str = ""  # how `spec` was chosen (registry name, HF id, config facts): for the manifest
    random_weights: bool = False  # a built-in test model (tiny.py marks its model_index.json)
    trained_on: str | None = None  # a model trained by train_mini.py: what it learned from


@dataclass(frozen=True)
class LoadReport:
    """What load_truncated_transformer read."""

    tensors_read: int
    tensors_in_checkpoint: int
    bytes_read: int
    shards_opened: int
    files: tuple[Path, ...]  # the shards read, sorted


def builtin_cache_dir() -> Path:
    return Path(os.environ.get("DITF_CACHE", Path.home() / ".cache" / "ditf"))


def resolve_source(model: str) -> ModelSource:
    """Find the model's pipeline folder and which registered model's defaults apply (catalog.identify)."""
    spec = catalog.model_spec(model)
    hints: list[tuple[str, str]] = []
    if spec is not None and spec.shipped is not None:
        path = Path(__file__).resolve().parent / spec.shipped
        if not (path / "model_index.json").is_file():
            raise ExportInputError(f"--model {model}: its folder {path} is missing from this installation; "
                                   "reinstall ditf (or run `make train-mini` to train it again)")
    elif spec is not None and spec.builtin is not None:
        path = builtin_cache_dir() / spec.name
        family_config = catalog.families()[spec.family].config_file
        if not builtin_complete(path, family_config):  # absent, damaged, or built by an older ditf: (re)build it
            spec.builtin(str(path))
    elif spec is not None:
        path = _from_hf_cache(spec.hf_id, registry_name=model,
                              include=catalog.families()[spec.family].download_include)
    elif Path(model).expanduser().is_dir():
        path = Path(model).expanduser().resolve()
    elif "/" in model and not model.startswith((".", "/", "~")) and model.count("/") == 1:
        path = _from_hf_cache(model)
        hints.append(("HF id", model))
    else:
        from .request import unknown_model_message

        raise ExportInputError(unknown_model_message(model))
    try:
        family, config = catalog.identify_folder(path)
    except KeyError as exc:
        raise ExportInputError(f"{path}: {exc.args[0]}") from None
    recipe = _recipe(path, family)
    if spec is not None:
        rule = f"registry name {model}"
    elif recipe is not None:  # trained (or its random twin made) by train_mini.py: that recipe's defaults
        spec, rule = recipe, f"model_index.json: a {recipe.name} folder written by train_mini.py"
    else:
        found = catalog.identify(family, config, catalog.adapter_for(family).hidden_size(config),
                                 tuple(hints) + _hf_ids_of_folder(path, config))
        spec, rule = found.spec, found.rule
    return ModelSource(name=model, path=path, family=family, spec=spec, transformer_config=config,
                       defaults_rule=rule, random_weights=has_random_weights(path), trained_on=trained_on(path))


def _hf_ids_of_folder(path: Path, config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """HF ids a local folder reveals: the HF cache's own layout (models--owner--name/snapshots/<rev>), and
    the `_name_or_path` diffusers writes when a pipeline loaded from the Hub is saved again."""
    hints = []
    for part in path.parts:
        if part.startswith("models--") and part.count("--") >= 2:
            hints.append(("HF cache folder of", "/".join(part[len("models--"):].split("--", 1))))
    for where, data in (("transformer config _name_or_path", config), ("model_index.json _name_or_path",
                                                                      _read_json(path / "model_index.json"))):
        name = data.get("_name_or_path") if isinstance(data, dict) else None
        if isinstance(name, str) and name.count("/") == 1 and not Path(name).is_absolute():
            hints.append((where, name))
    return tuple(hints)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def builtin_complete(path: Path, config_file: str) -> bool:
    """A built-in model's cached folder is whole and carries tiny.py's random-weights mark (older builds lack
    it). A diffusers pipeline: every component model_index.json lists has its config and, for models, its
    safetensors. A single model (DINOv2): its config (the family's `config_file`) and its safetensors."""
    marked = _random_weights_mark(path)
    if marked is None or not marked[1]:
        return False
    if marked[0] != "model_index.json":
        return (path / config_file).is_file() and any(path.glob("*.safetensors"))
    index = json.loads((path / "model_index.json").read_text())
    for name in index:
        if name.startswith("_"):
            continue
        folder = path / name
        if not folder.is_dir() or not any(folder.glob("*.json")):
            return False
        is_tokenizer = "tokenizer" in name or "scheduler" in name
        if not is_tokenizer and not any(folder.glob("*.safetensors")):
            return False
    return True


def trained_on(path: Path) -> str | None:
    """What a model trained by train_mini.py learned from (its model_index.json says), else None."""
    index = _read_json(path / "model_index.json")
    value = index.get(TRAINED_ON_KEY) if isinstance(index, dict) else None
    return str(value) if value else None


def _recipe(path: Path, family: str) -> ModelSpec | None:
    """The registered model a folder's model_index.json names as its recipe (RECIPE_KEY), if of this family."""
    index = _read_json(path / "model_index.json")
    name = index.get(RECIPE_KEY) if isinstance(index, dict) else None
    spec = catalog.model_spec(name) if isinstance(name, str) else None
    return spec if spec is not None and spec.family == family else None


def has_random_weights(path: Path) -> bool:
    """tiny.py writes `"_ditf_random_weights": true` into the model_index.json (a pipeline) or config.json
    (a single model) of the models it builds."""
    marked = _random_weights_mark(path)
    return marked is not None and marked[1]


def _random_weights_mark(path: Path) -> tuple[str, bool] | None:
    """(the file read, its random-weights mark): model_index.json when the folder has one, else config.json."""
    name = "model_index.json" if (path / "model_index.json").is_file() else "config.json"
    try:
        content = json.loads((path / name).read_text())
    except (OSError, ValueError):
        return None
    return (name, bool(content.get(RANDOM_WEIGHTS_KEY, False))) if isinstance(content, dict) else None


def read_vae_config(source: ModelSource) -> dict[str, Any]:
    """vae/config.json: the latent channels and the VAE's stride (families.base.vae_stride) come from it."""
    cfg = source.path / "vae" / "config.json"
    if not cfg.is_file():
        raise ExportInputError(f"{source.path} has no vae/ folder (or no vae/config.json); the feature graph "
                               "starts from pixels and needs it")
    return json.loads(cfg.read_text())


def download_command(repo_id: str, include: tuple[str, ...] = FamilyAdapter.download_include) -> str:
    """The `hf` command (huggingface_hub's CLI) that fetches what an export of `repo_id` reads (the family's
    `download_include`). `hf` takes one pattern per --include (further words would be read as file names)."""
    return f"hf download {repo_id} " + " ".join(f"--include '{p}'" for p in include)


def _from_hf_cache(repo_id: str, registry_name: str | None = None,
                   include: tuple[str, ...] = FamilyAdapter.download_include) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    cache_dir = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE  # read at call time, not import time
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception as exc:  # LocalEntryNotFoundError and friends
        what = f"--model {registry_name} ({repo_id})" if registry_name else f"--model {repo_id}"
        spec = catalog.model_spec(registry_name) if registry_name else None
        gated = (f"{repo_id} is gated: accept its licence at https://huggingface.co/{repo_id} and log in "
                 "(`hf auth login`) first. ") if spec is not None and spec.gated else ""
        raise ExportInputError(
            f"{what} is not in the local Hugging Face cache ({cache_dir}); ditf never downloads. "
            f"{gated}On a machine with network run: {download_command(repo_id, include)} "
            "then copy the cache here (or add --local-dir DIR to download into a folder and pass that as "
            "--model); README.md, 'Real weights', lists what each model needs"
        ) from exc


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from the shard index or the single file."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: folder / v for k, v in weight_map.items()}
    single = folder / WEIGHTS_NAME
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {k: single for k in f.keys()}
    raise ExportInputError(
        f"{folder} holds no {WEIGHTS_NAME} (or its .index.json): ditf loads safetensors only, never pickles"
    )


def load_truncated_transformer(
    source: ModelSource, adapter: FamilyAdapter, layer: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, LoadReport]:
    """Build the transformer with a truncated config on the meta device and read only the needed tensors.

    Returns the module (unneeded parameters stay on `meta`) and a report of what was read.
    """
    import diffusers
    from safetensors import safe_open

    config = source.transformer_config
    cls = getattr(diffusers, config["_class_name"])
    truncated = adapter.truncated_config(config, layer)
    init_kwargs = {k: v for k, v in truncated.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = cls.from_config(init_kwargs)
    folder = source.path / "transformer"
    files = _weight_files(folder)
    wanted = [k for k in files if adapter.needed_weight(k, config, layer)]
    by_file: dict[Path, list[str]] = {}
    for k in wanted:
        by_file.setdefault(files[k], []).append(k)
    state: dict[str, torch.Tensor] = {}
    for path, keys in by_file.items():
        for k in keys:
            # one open per tensor: safetensors memory-maps the shard, and every page read stays resident (and
            # counts in RSS) until it is closed: with one open per 10 GB shard, the bf16 shard would sit
            # beside its fp32 copy
            with safe_open(str(path), framework="pt") as f:
                state[k] = f.get_tensor(k).to(dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise ExportInputError(f"{folder}: weights do not fit the config: {result.unexpected_keys[:5]} ...")
    model_keys = set(model.state_dict().keys())
    needed = {k for k in model_keys if adapter.needed_weight(k, config, layer)}
    missing = sorted(needed - set(state))
    if missing:
        raise ExportInputError(f"{folder}: the checkpoint lacks tensors layer {layer} needs: {missing[:5]}")
    model.eval().requires_grad_(False)
    report = LoadReport(tensors_read=len(state), tensors_in_checkpoint=len(files),
                        bytes_read=int(sum(t.numel() * t.element_size() for t in state.values())),
                        shards_opened=len(by_file), files=tuple(sorted(by_file)))
    return model, report


def load_vae(source: ModelSource):
    from diffusers import AutoencoderKL

    folder = source.path / "vae"
    if not folder.is_dir():
        raise ExportInputError(f"{source.path} has no vae/ folder; the feature graph starts from pixels and needs it")
    vae = AutoencoderKL.from_pretrained(str(folder), use_safetensors=True, torch_dtype=torch.float32)
    return vae.eval().requires_grad_(False)


def vae_weight_files(source: ModelSource) -> list[Path]:
    return sorted((source.path / "vae").glob("*.safetensors"))
