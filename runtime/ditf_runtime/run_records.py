"""What a resumable evaluation's output folder records about its run, and the refusal to mix two runs in it.

`ditf eval-spair` / `eval-ap10k` (evaluate.py) and `ditf eval-davis` (davis/evaluate.py) both keep a run record
beside their outputs; a rerun with other settings must not mix its results into them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError
from .manifest import MODEL_FILE


def model_record(manifest: Any) -> dict[str, Any]:
    """One export's identity and settings, as a run record holds them."""
    return dict(
        model_name=manifest.model_name,
        model_sha256=manifest.files.get(MODEL_FILE, {}).get("sha256"),
        precision=manifest.precision,
        layer=manifest.feature.layer,
        timestep=manifest.feature.timestep,
        ensemble=manifest.feature.ensemble,
    )


def extractor_record(extractor: Any) -> dict[str, Any]:
    """The extractor's class and its export's record; a fused pair's two records and weights."""
    model: dict[str, Any] = {"extractor": type(extractor).__name__}
    manifest = getattr(extractor, "manifest", None)
    if manifest is not None:
        model.update(model_record(manifest))
    fused = getattr(extractor, "manifests", None)  # two fused exports (ditf_runtime.fusion)
    if fused is not None:
        model.update(models=[model_record(m) for m in fused], weights=list(extractor.weights))
    return model


def refuse_other_settings(record_path: Path, record: dict[str, Any], overwrite: bool, holds: str,
                          unit: str) -> None:
    """Refuse when `record_path` holds a run record other than `record` (unless `overwrite`): the folder holds
    `holds` made with other settings; the message names the fields that differ."""
    if not record_path.is_file() or overwrite:
        return
    try:
        previous = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        previous = {}
    if previous != record:
        changed = sorted(k for k in record if previous.get(k) != record[k]) or ["?"]
        raise InputError(
            f"{record_path.parent} holds {holds} made with other settings (differs in {', '.join(changed)}); "
            f"use another --out, or --overwrite to redo every {unit}"
        )
