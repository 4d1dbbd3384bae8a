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

# Every registry name, torch-free: `ditf-export --model` is checked against them before torch is imported (a typo
# is refused in well under a second, with the close match). register_model refuses a name missing here.
MODEL_NAMES = (
    "flux", "flux-schnell", "flux-mini", "flux-tiny",
    "sd3", "sd3.5-medium", "sd3.5-large",
    "pixart-alpha", "pixart-alpha-512", "pixart-sigma",
    "dit-xl-2-256", "dit-xl-2-512",
    "latte", "latte-tiny",
    "wan2.1-1.3b", "wan2.1-14b", "wan-tiny",
    "cogvideox-2b", "cogvideox-5b", "cogvideox-tiny",
    *(f"dinov2-{size}{reg}" for size in ("small", "base", "large", "giant", "tiny") for reg in ("", "-reg")),
)

# model_index.json key that marks a pipeline of random weights (what tiny.py builds); diffusers ignores "_" keys.
RANDOM_WEIGHTS_KEY = "_ditf_random_weights"
# model_index.json key of a built-in model that was trained here (train_mini.py): what it learned from.
TRAINED_ON_KEY = "_ditf_trained_on"
# model_index.json key naming the registered model whose defaults a folder written by train_mini.py takes (its
# layer, timestep, 16 text tokens, size): a retrained or random-twin folder exported by path gets them too.
RECIPE_KEY = "_ditf_recipe"


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
class ConfigFact:
    """One fact of a transformer config that tells the models of a family apart (FLUX.1-dev has a guidance
    embedding, schnell has none; SD3.5-Medium has dual-attention layers, ...)."""

    key: str
    holds: Callable[[object], bool]
    text: str  # what the fact says, for the manifest: "guidance_embeds true"
    missing: object = None  # the diffusers class's default when a config omits the key
    # for a value the class derives from other keys when the config leaves it null (PixArt's size conditioning)
    derive: Callable[[dict], object] | None = None

    def check(self, config: dict) -> bool:
        value = self.derive(config) if self.derive is not None else config.get(self.key, self.missing)
        return bool(self.holds(value))


def fact_equals(key: str, value: object, missing: object = None) -> ConfigFact:
    return ConfigFact(key, lambda v: v == value, f"{key} {_text(value)}", missing)


def fact_nonempty(key: str) -> ConfigFact:
    return ConfigFact(key, lambda v: bool(v), f"{key} non-empty", ())


def fact_empty(key: str) -> ConfigFact:
    return ConfigFact(key, lambda v: not v, f"{key} empty", ())


def fact_hidden_size(value: int) -> ConfigFact:
    """The width itself, where it is what tells two models apart (SD3.5-Large's 2432 channels)."""
    return ConfigFact("hidden_size", lambda v: v == value, f"hidden size {value}")


def _text(value: object) -> str:
    return "true" if value is True else "false" if value is False else "null" if value is None else str(value)


@dataclass(frozen=True)
class ModelSpec:
    """What a registry name stands for. Defaults carry their provenance.

    `signature`: the config facts that identify this model among its family, for local folders and HF ids
    not named in the registry (None: never matched from a config: built-in models). The hidden size is
    not part of it: a narrower model of the same shape (a tiny test model) takes the same defaults, except
    the discard channels, which belong to the width (`hidden_size`).
    """

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
    shipped: str | None = None  # a trained model folder inside this package (flux-mini), relative to ditf_export/
    signature: tuple[ConfigFact, ...] | None = None
    gated: bool = False  # the HF repository asks each user to accept its licence before downloading

    def matches(self, config: dict, hidden_size: int) -> bool:
        if self.signature is None:
            return False
        return all(fact.check(config) if fact.key != "hidden_size" else fact.holds(hidden_size)
                   for fact in self.signature)

    def describe_signature(self) -> str:
        return ", ".join(f.text for f in self.signature or ()) or f"any {self.family} config"


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    if spec.name not in MODEL_NAMES:
        raise ValueError(f"model {spec.name!r} is not in registry.MODEL_NAMES: add it there too (the CLI checks "
                         "names against that list before importing torch)")
    _MODELS[spec.name] = spec
    return spec


def registered_families() -> dict[str, type]:
    """What has registered so far (ditf_export.catalog.families() for all of them)."""
    return dict(_FAMILIES)


def registered_models() -> dict[str, ModelSpec]:
    """What has registered so far (ditf_export.catalog.models() for all of them)."""
    return dict(_MODELS)
