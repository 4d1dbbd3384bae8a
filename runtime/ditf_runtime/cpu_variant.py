"""The CPU variant of an export: model.onnx rewritten for onnxruntime's CPU provider, beside it.

    EXPORT/model.cpu.onnx   the rewritten graph. Its weights are references into model.onnx.data
                            (shared, never copied); the few tensors it adds are small and inline.
    EXPORT/model.cpu.json   its record: the manifest's sha256 of model.onnx and model.onnx.data it was
                            made from, its own sha256 and size, the rewrites, its parity against the
                            export's PyTorch reference (reference.safetensors, the export's thresholds)
                            and the tool versions. Written last: no record, no variant.

`ditf optimize-cpu EXPORT` makes it (cpu_rewrite.py), after export and on the machine that runs it:
- it works on any finished export, of any precision, without re-exporting (a FLUX.1 export is tens
  of GB) and without torch: parity is judged against the reference the export saved;
- the export machine is often a GPU machine, where a CPU-only graph is dead weight;
- manifest.json is never rewritten after export, so a later artefact carries its own record,
  like a TensorRT engine's engine.json.
model.onnx stays what TensorRT and onnxruntime's CUDA provider run: the variant's fused attention
(com.microsoft MultiHeadAttention) is an onnxruntime contrib op that TensorRT cannot parse.

Which graph onnxruntime opens (`load(..., cpu_variant=...)`), never silently:
- "auto" (default): on the CPU provider, the variant when its record exists; a record that does not
  match (a changed variant file, or a variant made from another export) is refused, not skipped.
  Elsewhere (CUDA) model.onnx, and the choice says the variant was left out.
- "on": the variant or an error (absent, or not on the CPU provider).
- "off": model.onnx.
The choice and its reason are on the extractor (`Extractor.graph`).

Attention memory, in one place (what a memory estimate must use), per attention call of B sequences,
`heads` heads, Sq query and Sk key tokens, head size D, float32:
- dense (model.onnx): the score matrix B*heads*Sq*Sk*4 bytes, twice while Softmax runs (scores in,
  probabilities out); at 2048x2048 the VAE's single-head attention over 65,536 latent cells alone
  is 17.2 GB per copy;
- fused (this variant, onnxruntime's CPU flash kernel): two re-laid-out copies of Q, K and V (the
  graph's [B, S, heads*D] inputs of the fused op, and the kernel's own [B, heads, S, D] copies),
  2*B*heads*D*(Sq + 2*Sk)*4 bytes, plus one block buffer per thread, (2*Br + Br*Bc + Br*D)*4 bytes
  with Bc = L2 bytes / (4*4*2*D) and Br = min(Bc, 2*D): a few hundred KB. Linear in the tokens.
See `attention_bytes`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BackendError
from .files import sha256_file, write_text_atomic
from .manifest import MODEL_DATA_FILE, MODEL_FILE, Manifest, ManifestError

VARIANT_FILE = "model.cpu.onnx"
RECORD_FILE = "model.cpu.json"
RECORD_KIND = "ditf-cpu-variant"
RECORD_VERSION = 1
CHOICES = ("auto", "on", "off")
MAKE_IT = "run `ditf optimize-cpu EXPORT` to make it"


@dataclass(frozen=True)
class VariantRecord:
    """model.cpu.json."""

    source: dict[str, str]  # model.onnx, model.onnx.data -> the manifest's sha256 at the time
    files: dict[str, dict[str, Any]]  # model.cpu.onnx -> {"sha256", "bytes"}
    rewrites: dict[str, Any]
    parity: dict[str, Any]
    tools: dict[str, str] = field(default_factory=dict)
    created: str = ""
    kind: str = RECORD_KIND
    schema_version: int = RECORD_VERSION

    def save(self, export_dir: str | os.PathLike) -> Path:
        return write_text_atomic(Path(export_dir) / RECORD_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> "VariantRecord":
        path = Path(export_dir) / RECORD_FILE
        try:
            data = json.loads(path.read_text())
            record = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ManifestError(f"{path} is unreadable or malformed ({exc}); {MAKE_IT} again") from exc
        if record.kind != RECORD_KIND or record.schema_version != RECORD_VERSION:
            raise ManifestError(f"{path} is a {record.kind!r} record, version {record.schema_version}; this "
                                f"runtime reads {RECORD_KIND!r} version {RECORD_VERSION}: {MAKE_IT} again")
        return record


@dataclass(frozen=True)
class GraphChoice:
    """The graph file onnxruntime opens, and why."""

    path: Path
    variant: bool
    reason: str
    # every attention of the graph is the fused kernel (no [heads, N, N] scores): what the memory estimate uses
    fused_attention: bool = False


def source_hashes(manifest: Manifest) -> dict[str, str]:
    """What a variant is made from: the manifest's sha256 of model.onnx and model.onnx.data."""
    return {name: manifest.files[name]["sha256"] for name in (MODEL_FILE, MODEL_DATA_FILE) if name in manifest.files}


def check_variant(export_dir: Path, manifest: Manifest) -> VariantRecord:
    """The record, once the variant is shown to belong to this export and to be unchanged."""
    record = VariantRecord.load(export_dir)
    if record.source != source_hashes(manifest):
        raise ManifestError(f"{export_dir / VARIANT_FILE} was made from another model.onnx / model.onnx.data "
                            f"than this export's manifest records; {MAKE_IT} again")
    meta = record.files.get(VARIANT_FILE)
    path = export_dir / VARIANT_FILE
    if not meta or not path.is_file():
        raise ManifestError(f"{path} is missing though {RECORD_FILE} records it; {MAKE_IT} again")
    # The variant is a graph without weights (KB to a few MB): hashing it on every load is cheap.
    if path.stat().st_size != meta.get("bytes") or sha256_file(path) != meta.get("sha256"):
        raise ManifestError(f"{path} differs from its record in {RECORD_FILE} (changed after it was made); "
                            f"{MAKE_IT} again, or load with cpu_variant='off'")
    return record


def choose_graph(export_dir: Path, manifest: Manifest, *, on_cpu: bool, choice: str = "auto") -> GraphChoice:
    """model.onnx or model.cpu.onnx, by the rules in the module docstring."""
    if choice not in CHOICES:
        raise BackendError(f"cpu_variant={choice!r}: use one of {', '.join(CHOICES)}")
    plain = export_dir / MODEL_FILE
    if choice == "off":
        return GraphChoice(plain, False, "CPU variant not requested (cpu_variant='off')")
    has_record = (export_dir / RECORD_FILE).is_file()
    if not on_cpu:
        if choice == "on":
            raise BackendError("cpu_variant='on': the CPU variant runs on onnxruntime's CPU provider only; "
                               "use device='cpu', or cpu_variant='auto' on a GPU")
        why = f"{VARIANT_FILE} left out: it is for the CPU provider" if has_record else "no CPU variant needed"
        return GraphChoice(plain, False, why)
    if not has_record:
        if choice == "on":
            raise BackendError(f"cpu_variant='on' but {export_dir} has no CPU variant; {MAKE_IT}")
        orphan = (export_dir / VARIANT_FILE).is_file()
        why = (f"{VARIANT_FILE} has no {RECORD_FILE} (an interrupted ditf optimize-cpu?): not used; {MAKE_IT} again"
               if orphan else f"no CPU variant ({MAKE_IT})")
        return GraphChoice(plain, False, why)
    rewrites = check_variant(export_dir, manifest).rewrites
    # Softmaxes the rewrite could not match stay dense attention: the memory estimate must then stay dense too.
    fused = rewrites.get("attention_fused", 0) == rewrites.get("attention_found", -1)
    return GraphChoice(export_dir / VARIANT_FILE, True, f"CPU variant {VARIANT_FILE} (see {RECORD_FILE})", fused)


def attention_bytes(batch: int, heads: int, q_tokens: int, kv_tokens: int, head_dim: int, *, fused: bool,
                    threads: int = 1, l2_bytes: int = 1 << 20) -> int:
    """Peak extra bytes of one float32 attention call (module docstring), beyond its Q, K, V and output."""
    if not fused:
        return 2 * batch * heads * q_tokens * kv_tokens * 4
    block_kv = max(1, l2_bytes // (4 * 4 * 2 * head_dim))
    block_q = min(block_kv, 2 * head_dim, q_tokens)
    block_kv = min(block_kv, kv_tokens)
    per_thread = (2 * block_q + block_q * block_kv + block_q * head_dim) * 4
    return 2 * batch * heads * head_dim * (q_tokens + 2 * kv_tokens) * 4 + threads * per_thread
