"""Two small registries, pure data: family adapters (by decorator) and named models with their defaults.

Loading and task inference stay out of here (see loading.py), and so does "every family registered":
`ditf_export.catalog` imports the adapter modules and answers the lookups. Adapters import this module
to register themselves; it imports none of them, so the import graph has no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# Adapter classes are typed `type` here (families.base.FamilyAdapter subclasses): this module imports
# nothing of ditf_export, not even for type checking, so no import path leads back from it.
_FAMILIES: dict[str, type] = {}
_MODELS: dict[str, "ModelSpec"] = {}


def register(family: str) -> Callable[[type], type]:
    """Class decorator: `@register("flux")` makes an adapter available to the export loop."""

    def wrap(cls: type) -> type:
        if family in _FAMILIES:
            raise ValueError(f"family {family!r} registered twice")
        cls.family = family
        _FAMILIES[family] = cls
        return cls

    return wrap


@dataclass(frozen=True)
class Default:
    """A default value and where it comes from ("paper", "measured", "guessed", "model card")."""

    value: object
    source: str


@dataclass(frozen=True)
class ModelSpec:
    """What a registry name stands for. Defaults carry their provenance."""

    name: str
    family: str
    hf_id: str | None  # None for built-in models (flux-tiny)
    layer: Default
    timestep: Default
    image_size: Default
    discard: Default  # tuple of channel indices
    ensemble: Default = Default(8, "paper")
    guidance: Default | None = None  # None: the model has no guidance embedding
    hidden_size: int | None = None  # the family's hidden size: a local folder that differs gets no default discard
    text_max_length: int | None = None  # T5 tokens; None: the family's own default
    builtin: Callable[[str], None] | None = None  # builds the model folder offline (flux-tiny)


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    _MODELS[spec.name] = spec
    return spec


def registered_families() -> dict[str, type]:
    """What has registered so far (ditf_export.catalog.families() for all of them)."""
    return dict(_FAMILIES)


def registered_models() -> dict[str, ModelSpec]:
    """What has registered so far (ditf_export.catalog.models() for all of them)."""
    return dict(_MODELS)
