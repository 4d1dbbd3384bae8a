"""Verify once, then trust a stamp (ditf_runtime.verification); a sealed manifest (its digest).

Each test works on a copy of the flux-tiny export (a copy has new inodes, so the copied stamp vouches
for nothing until the copy is hashed once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import ditf_runtime
from ditf_runtime import verification
from ditf_runtime.cli import main as ditf_main
from ditf_runtime.manifest import MANIFEST_FILE, MODEL_DATA_FILE, MODEL_FILE, Manifest, ManifestError
from ditf_runtime.verification import STAMP_FILE, check_files

MODEL_FILES = (MODEL_FILE, MODEL_DATA_FILE)


@pytest.fixture()
def export_copy(flux_tiny_export, tmp_path) -> Path:
    return Path(shutil.copytree(flux_tiny_export, tmp_path / "export"))


def _hashed(export_dir: Path, names=MODEL_FILES) -> list[bool]:
    return [c.hashed for c in check_files(export_dir, Manifest.load(export_dir), names)]


def _flip_one_byte(path: Path, keep_mtime: bool = False) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:  # put mtime back as it was; ctime cannot be put back
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_export_stamps_its_files_so_the_first_load_hashes_nothing(flux_tiny_export):
    assert (flux_tiny_export / STAMP_FILE).is_file()
    assert _hashed(flux_tiny_export, None) == [False, False, False]


def test_a_copy_is_hashed_once_then_trusted(export_copy):
    assert _hashed(export_copy) == [True, True], "a copied stamp must not vouch for new inodes"
    assert _hashed(export_copy) == [False, False]
    with ditf_runtime.load(export_copy) as extractor:
        assert extractor.verify_reference()


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_changed_data_file_is_rehashed_and_refused(export_copy, keep_mtime):
    assert _hashed(export_copy) == [True, True]
    _flip_one_byte(export_copy / MODEL_DATA_FILE, keep_mtime=keep_mtime)  # same size, different content
    with pytest.raises(ManifestError, match="sha256 .* does not match the manifest"):
        ditf_runtime.load(export_copy)
    with pytest.raises(ManifestError, match="does not match the manifest"):
        ditf_runtime.load(export_copy)  # refused every time: a failed check is never stamped
    with ditf_runtime.load(export_copy, verify=False):
        pass  # --no-verify is still the user's explicit choice


def test_every_opened_file_needs_a_record_with_a_sha256(export_copy):
    manifest = Manifest.load(export_copy)
    files = dict(manifest.files)
    del files[MODEL_DATA_FILE]
    replace(manifest, files=files).save(export_copy)  # a consistent (sealed) manifest lacking the record
    with pytest.raises(ManifestError, match="model.onnx.data has no record in manifest.json"):
        ditf_runtime.load(export_copy)
    files[MODEL_DATA_FILE] = {"bytes": 1}
    replace(manifest, files=files).save(export_copy)
    with pytest.raises(ManifestError, match="record of model.onnx.data has no sha256"):
        ditf_runtime.load(export_copy)


def test_a_hand_edited_manifest_is_refused(export_copy):
    path = export_copy / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["feature"]["layer"] = 2
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(ManifestError, match="changed after export: its content no longer matches its digest"):
        ditf_runtime.load(export_copy)
    result = CliRunner().invoke(ditf_main, ["verify", str(export_copy)])
    assert result.exit_code == 1 and "re-export" in result.output and "Traceback" not in result.output


def test_a_manifest_resealed_for_another_graph_is_refused(export_copy):
    """Even a manifest with a valid digest must describe the graph it sits beside (ONNX metadata)."""
    manifest = Manifest.load(export_copy)
    replace(manifest, feature=replace(manifest.feature, layer=2)).save(export_copy)
    with pytest.raises(ManifestError, match="describe different graphs: ditf.layer '3' in the graph, '2'"):
        ditf_runtime.load(export_copy)


def test_read_only_export_keeps_its_stamp_in_the_user_cache(export_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DITF_CACHE", str(cache))
    (export_copy / STAMP_FILE).unlink()
    real_write = verification.write_text_atomic

    def read_only_folder(path, text):  # as on a read-only mount (root ignores chmod, so simulate it)
        if Path(path).parent == export_copy:
            raise PermissionError(13, "Read-only file system", str(path))
        return real_write(path, text)

    monkeypatch.setattr(verification, "write_text_atomic", read_only_folder)
    assert _hashed(export_copy) == [True, True]
    where = verification.stamp_location(export_copy)
    assert where is not None and where.parent == cache / "verified" and not (export_copy / STAMP_FILE).exists()
    assert _hashed(export_copy) == [False, False]


def test_ditf_verify_rehashes_everything_and_reports(export_copy):
    result = CliRunner().invoke(ditf_main, ["verify", str(export_copy)])
    assert result.exit_code == 0, result.output
    assert "manifest digest OK" in result.output and "3 files match their records" in result.output
    assert f"stamp: {export_copy / STAMP_FILE}" in result.output
    engine = export_copy / "engines" / "rtx1.7.1-sm80_86_89_120"  # a TensorRT engine: its plan is checked too
    engine.mkdir(parents=True)
    (engine / "model.plan").write_bytes(b"plan bytes")
    record = {"plan_sha256": hashlib.sha256(b"plan bytes").hexdigest(), "plan_bytes": 10,
              "onnx_sha256": {n: Manifest.load(export_copy).files[n]["sha256"] for n in MODEL_FILES}}
    (engine / "engine.json").write_text(json.dumps(record))
    result = CliRunner().invoke(ditf_main, ["verify", str(export_copy)])
    assert result.exit_code == 0 and "4 files match their records" in result.output, result.output
    stamp = json.loads((export_copy / STAMP_FILE).read_text())["files"]
    assert {"model.onnx", "reference.safetensors", f"engines/{engine.name}/model.plan"} <= set(stamp)
    (engine / "engine.json").write_text(json.dumps({**record, "onnx_sha256": {MODEL_FILE: "0" * 64}}))
    result = CliRunner().invoke(ditf_main, ["verify", str(export_copy)])  # as loading would, refused
    assert result.exit_code == 1 and "built from a different model.onnx" in result.output, result.output
    (engine / "engine.json").write_text(json.dumps(record))
    (engine / "model.plan").write_bytes(b"PLAN bytes")
    result = CliRunner().invoke(ditf_main, ["verify", str(export_copy)])
    assert result.exit_code == 1 and "does not match its engine.json" in result.output
    (engine / "engine.json").write_text(json.dumps({}))
    result = CliRunner().invoke(ditf_main, ["verify", str(export_copy)])
    assert result.exit_code == 1 and "records no plan_sha256" in result.output
    shutil.rmtree(export_copy / "engines")
    _flip_one_byte(export_copy / "reference.safetensors")
    result = CliRunner().invoke(ditf_main, ["verify", str(export_copy)])
    assert result.exit_code == 1 and "reference.safetensors sha256" in result.output


def test_a_stamp_from_another_export_in_the_same_folder_is_ignored(export_copy):
    """The stamp is keyed to the manifest's digest: files stamped for one export never vouch for another."""
    assert _hashed(export_copy) == [True, True]
    stamp = json.loads((export_copy / STAMP_FILE).read_text())
    stamp["manifest_digest"] = "sha256:" + "0" * 64
    (export_copy / STAMP_FILE).write_text(json.dumps(stamp))
    assert _hashed(export_copy) == [True, True]


def test_ditf_verify_checks_the_cpu_variant_and_its_record(flux_tiny_cpu_variant, tmp_path):
    """The CPU variant is what `match` opens on the CPU: one byte appended to it, or a record made for another
    export, fails `verify` as it fails loading."""
    from ditf_runtime.cpu_variant import RECORD_FILE, VARIANT_FILE

    export = Path(shutil.copytree(flux_tiny_cpu_variant, tmp_path / "export"))
    result = CliRunner().invoke(ditf_main, ["verify", str(export)])
    assert result.exit_code == 0 and "4 files match their records" in result.output, result.output
    assert f"{VARIANT_FILE}: " in result.output
    record = (export / RECORD_FILE).read_text()
    with open(export / VARIANT_FILE, "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(ditf_main, ["verify", str(export)])
    assert result.exit_code == 1 and f"{VARIANT_FILE} differs from its record" in result.output, result.output
    assert "Traceback" not in result.output
    with pytest.raises(ManifestError, match="differs from its record"):  # what `match` says: the same verdict
        ditf_runtime.load(export)
    shutil.copy(flux_tiny_cpu_variant / VARIANT_FILE, export / VARIANT_FILE)
    other = json.loads(record)
    other["source"][MODEL_DATA_FILE] = "0" * 64
    (export / RECORD_FILE).write_text(json.dumps(other))
    result = CliRunner().invoke(ditf_main, ["verify", str(export)])
    assert result.exit_code == 1 and "was made from another model.onnx" in result.output, result.output
    (export / RECORD_FILE).unlink()  # a variant without its record is never opened: said, not refused
    result = CliRunner().invoke(ditf_main, ["verify", str(export)])
    assert result.exit_code == 0 and "3 files match their records" in result.output
    assert f"{VARIANT_FILE} has no {RECORD_FILE}" in result.output
