"""Every family adapter and named model, registered: the one module that imports them all.

Whoever needs "all families" (loading a model by name or folder, the CLI, tests) asks here; adapters
import only `registry` (to register) and `families.base`, never this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .families import cogvideox, dinov2, dit, flux, latte, pixart, sd3, wan  # noqa: F401  (importing an adapter module registers it)
from .families.base import FamilyAdapter
from .registry import ModelSpec


def families() -> dict[str, type[FamilyAdapter]]:
    return registry.registered_families()


def adapter_for(family: str) -> FamilyAdapter:
    known = families()
    if family not in known:
        raise KeyError(f"no adapter for family {family!r}; known: {', '.join(sorted(known))}")
    return known[family]()


def family_of_transformer(class_name: str) -> str:
    """The family whose adapter loads a given diffusers transformer class."""
    for name, cls in families().items():
        if cls.transformer_class_name == class_name:
            return name
    raise KeyError(
        f"no ditf adapter handles transformer class {class_name!r}; supported: "
        + ", ".join(sorted(c.transformer_class_name for c in families().values()))
    )


def identify_folder(path: Path) -> tuple[str, dict[str, Any]]:
    """(family, config) of a local model folder: the first adapter whose config file is there and handles it.

    A diffusers pipeline is recognised by transformer/config.json's `_class_name`, a transformers model
    (DINOv2) by config.json's `model_type`; KeyError says what was looked for.
    """
    looked = []
    for name, cls in families().items():
        config_path = path / cls.config_file
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            if cls.handles(config):
                return name, config
            looked.append(f"{cls.config_file} ({config.get('_class_name') or config.get('model_type') or '?'})")
    supported = "; ".join(dict.fromkeys(cls.describe() for cls in families().values()))
    if not looked:
        files = " or ".join(sorted({cls.config_file for cls in families().values()}))
        raise KeyError(f"not a diffusers pipeline folder nor a transformers model folder (no {files}; a pipeline "
                       f"needs at least model_index.json, transformer/ and vae/); supported: {supported}")
    raise KeyError(f"no ditf adapter handles this folder (found {', '.join(dict.fromkeys(looked))}); "
                   f"supported: {supported}")


def models() -> dict[str, ModelSpec]:
    return registry.registered_models()


def model_spec(name: str) -> ModelSpec | None:
    return models().get(name)


@dataclass(frozen=True)
class Identified:
    """Which registered model's defaults a model takes, and the rule that decided (for the manifest)."""

    spec: ModelSpec | None
    rule: str


def identify(family: str, config: dict, hidden_size: int, hints: tuple[tuple[str, str], ...] = ()) -> Identified:
    """The registered model a transformer config is, from its HF id when one is known (`hints`: (where it
    was found, HF id), most reliable first) and otherwise from the config's facts (ModelSpec.signature):
    guidance embedding, dual-attention layers, sample size, ... never from the hidden size alone.

    An HF id whose registered model contradicts the config (a FLUX.1-dev id on a config without guidance)
    loses to the config: the config is what the graph is built from."""
    candidates = [s for s in models().values() if s.family == family and s.builtin is None]
    contradicted = ""
    for where, hf_id in hints:
        spec = next((s for s in candidates if s.hf_id == hf_id), None)
        if spec is None:
            continue
        if spec.signature is None or spec.matches(config, hidden_size):
            return Identified(spec, f"{where} {hf_id} ({spec.name})")
        contradicted = f"; {where} {hf_id} names {spec.name}, whose config facts ({spec.describe_signature()}) " \
                       "this config does not have"
    matched = [s for s in candidates if s.matches(config, hidden_size)]
    if not matched:
        return Identified(None, f"no registered {family} model has this config's facts{contradicted}")
    # several fit (a config without the keys that tell them apart): the one of this width, else the first
    spec = next((s for s in matched if s.hidden_size == hidden_size), matched[0])
    return Identified(spec, f"config: {spec.describe_signature()} ({spec.name}){contradicted}")
