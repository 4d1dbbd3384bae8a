"""Two small registries: family adapters (by decorator) and named models with their defaults.

Loading and task inference stay out of here (see loading.py); this module only answers
"which adapter handles family X" and "what does the name `flux` stand for".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .families.base import FamilyAdapter

_FAMILIES: dict[str, type["FamilyAdapter"]] = {}


def register(family: str) -> Callable[[type["FamilyAdapter"]], type["FamilyAdapter"]]:
    """Class decorator: `@register("flux")` makes an adapter available to the export loop."""

    def wrap(cls: type["FamilyAdapter"]) -> type["FamilyAdapter"]:
        if family in _FAMILIES:
            raise ValueError(f"family {family!r} registered twice")
        cls.family = family
        _FAMILIES[family] = cls
        return cls

    return wrap


def families() -> dict[str, type["FamilyAdapter"]]:
    from . import families as _  # noqa: F401  (importing the package registers every adapter)

    return dict(_FAMILIES)


def adapter_for(family: str) -> "FamilyAdapter":
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
    extras: dict = field(default_factory=dict)


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    _MODELS[spec.name] = spec
    return spec


def models() -> dict[str, ModelSpec]:
    from . import families as _  # noqa: F401  (adapters register their models)

    return dict(_MODELS)


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
