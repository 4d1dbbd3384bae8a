"""config.pbtxt, the protobuf text form of Triton's ModelConfig: tensors and the rendered file.

Kept apart from triton_repo.py (which lays out the repository folders) because the text format and
its type names are Triton's, while the folder layout is ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..manifest import FEATURES_OUTPUT, IMAGE_INPUT, NOISE_INPUT, Manifest, ManifestError
from .protocol import Port

INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DEFAULT_QUEUE_DELAY_US = 2000
_CONFIG_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}


@dataclass(frozen=True)
class Tensor:
    """A config.pbtxt input/output: name, TYPE_*, dims (batch axis excluded when batching)."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False

    def render(self) -> str:
        lines = [f'    name: "{self.name}"', f"    data_type: {self.data_type}", f"    dims: [ {', '.join(map(str, self.dims))} ]"]
        if self.optional:
            lines.append("    optional: true")
        return "  {\n" + "\n".join(lines) + "\n  }"


def render_config(
    name: str,
    *,
    inputs: list[Tensor],
    outputs: list[Tensor],
    max_batch_size: int,
    instance_kind: str,
    instance_count: int,
    backend: str | None = None,
    platform: str | None = None,
    default_model_filename: str | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    parameters: dict[str, str] | None = None,
) -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig)."""
    parts = [f'name: "{name}"']
    if platform:
        parts.append(f'platform: "{platform}"')
    if backend:
        parts.append(f'backend: "{backend}"')
    parts.append(f"max_batch_size: {max_batch_size}")
    if default_model_filename:
        parts.append(f'default_model_filename: "{default_model_filename}"')
    parts.append("input [\n" + ",\n".join(t.render() for t in inputs) + "\n]")
    parts.append("output [\n" + ",\n".join(t.render() for t in outputs) + "\n]")
    if max_batch_size > 0:
        parts.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    parts.append(f"instance_group [\n  {{\n    kind: {INSTANCE_KINDS[instance_kind]}\n    count: {instance_count}\n  }}\n]")
    for key, value in (parameters or {}).items():
        parts.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{_escape(value)}" }}\n}}')
    return "\n".join(parts) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def graph_tensors(
    manifest: Manifest, max_batch_size: int, ensemble: int | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs and outputs as config tensors, from the manifest's TensorSpecs."""

    def convert(spec) -> Tensor:
        dtype = _CONFIG_TYPES.get(spec.dtype)
        if dtype is None:
            raise ManifestError(f"manifest tensor {spec.name!r} has dtype {spec.dtype}, which Triton configs lack here")
        dims = [d if isinstance(d, int) else -1 for d in spec.shape]
        if spec.name == NOISE_INPUT and ensemble is not None:
            dims[1] = ensemble  # a TensorRT engine's profiles fix E
        if max_batch_size > 0:
            if isinstance(spec.shape[0], int):
                raise ManifestError(
                    f"{spec.name!r} has a static batch axis {spec.shape[0]}: use max_batch_size 0 for this export"
                )
            dims = dims[1:]
        return Tensor(spec.name, dtype, tuple(dims))

    names_in = sorted(spec.name for spec in manifest.inputs)
    names_out = [spec.name for spec in manifest.outputs]
    if names_in not in (sorted([IMAGE_INPUT, NOISE_INPUT]), [IMAGE_INPUT]) or names_out != [FEATURES_OUTPUT]:
        raise ManifestError(f"manifest declares inputs {names_in} and outputs {names_out}; expected image, noise "
                            "-> features (or image -> features)")
    return [convert(s) for s in manifest.inputs], [convert(s) for s in manifest.outputs]


def port_tensor(port: Port) -> Tensor:
    return Tensor(port.name, port.config_dtype, port.shape, port.optional)
