"""Every family adapter and named model, registered: the one module that imports them all.

Whoever needs "all families" (loading a model by name or folder, the CLI, tests) asks here; adapters
import only `registry` (to register) and `families.base`, never this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import registry
from .families import dinov2, dit, flux, latte, pixart, sd3  # noqa: F401  (importing an adapter module registers it)
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


def spec_for_family(family: str, hidden_size: int | None = None) -> ModelSpec | None:
    """The first registered model of a family (of that hidden size, when one matches): where a local folder
    takes its defaults from. SD3.5-Large (2432) and SD3-Medium (1536) share a family, not their channels."""
    candidates = [s for s in models().values() if s.family == family and s.builtin is None]
    for spec in candidates:
        if hidden_size is not None and spec.hidden_size == hidden_size:
            return spec
    return candidates[0] if candidates else None
