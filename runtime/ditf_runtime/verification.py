"""An export's files checked against its manifest, without re-hashing tens of GB on every load.

A FLUX export holds 16-32 GB; hashing it takes about a minute, which every `ditf match`, Ray actor and
Triton instance would pay again. So a file is hashed once (by ditf-export when it writes the folder, by
`ditf verify DIR`, or by the first load that finds no valid stamp), and what was hashed is stamped:
per file, the sha256 that matched the manifest and the file's size, mtime, ctime, inode and device at
that moment. A later check trusts a file whose stat is unchanged; any other is re-hashed (the stamp is
refreshed) and refused if its sha256 differs. ctime is in the key beside mtime because it cannot be set
back by hand (touch -d can reset mtime); a copy of the folder has new inodes, so a copied stamp never
vouches for the copy.

Where the stamp lives: DIR/.ditf-verified.json when the export folder is writable, so every process and
user on the machine shares it and it goes with the folder; otherwise (a read-only export: a mounted model
repository, a container image) in the user cache, $DITF_CACHE/verified/ (default ~/.cache/ditf). A stamp
is keyed to the manifest's digest (a new export in the same folder starts afresh) and is only ever a
cache of "hashed and matched": deleting it costs one re-hash. manifest.json itself is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .errors import ManifestError
from .files import sha256_file, write_text_atomic

if TYPE_CHECKING:
    from .manifest import Manifest

STAMP_FILE = ".ditf-verified.json"
STAMP_VERSION = 1
SAY_HASHING_BYTES = 256 << 20  # files this large take seconds to hash: say so before


@dataclass(frozen=True)
class FileCheck:
    """How one file was found good: from the stamp (its stat unchanged) or by hashing it now."""

    name: str
    bytes: int
    hashed: bool
    seconds: float = 0.0


def record_of(manifest: Manifest, name: str) -> dict[str, Any]:
    """The manifest's record of a file the runtime opens: refuse a file without one, or without a sha256."""
    record = manifest.files.get(name)
    if record is None:
        raise ManifestError(
            f"{name} has no record in manifest.json (recorded: {', '.join(sorted(manifest.files)) or 'none'}): "
            "every file the runtime opens must be recorded with its sha256; re-export the model"
        )
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise ManifestError(f"the manifest's record of {name} has no sha256 ({record!r}); re-export the model")
    return record


def check_files(export_dir: str | os.PathLike, manifest: Manifest, names: Iterable[str] | None = None, *,
                rehash: bool = False, say: Callable[[str], None] | None = None) -> list[FileCheck]:
    """Refuse any file in `names` (default: every recorded file) that is missing, has no record, or whose
    size or sha256 differs from the manifest. Files whose stat matches the stamp are not re-hashed, unless
    `rehash`. Returns what was done per file; the stamp is rewritten when anything was hashed."""
    names = list(manifest.files) if names is None else list(names)
    records = {name: record_of(manifest, name) for name in names}
    return check_recorded(export_dir, manifest, records, rehash=rehash, say=say)


def check_recorded(export_dir: str | os.PathLike, manifest: Manifest, records: dict[str, dict[str, Any]], *,
                   rehash: bool = False, say: Callable[[str], None] | None = None,
                   recorded_in: str = "the manifest", fix: str = "re-export it") -> list[FileCheck]:
    """check_files for files recorded elsewhere than the manifest (a TensorRT engine's plan: its sha256 is in
    its engine.json). `records`: path relative to the export -> {"sha256", optional "bytes"}; they share the
    export's stamp. `recorded_in` and `fix` word the refusals."""
    export_dir = Path(export_dir)
    stamp = _read_stamp(export_dir, manifest)  # kept for the files not checked here, even when rehashing
    checks, changed = [], False
    for name, record in records.items():
        path = export_dir / name
        if not path.is_file():
            raise ManifestError(f"{path} is missing; the export folder is incomplete, {fix}")
        before = _stat_key(path)
        if record.get("bytes") is not None and before["size"] != record["bytes"]:
            raise ManifestError(
                f"{path} has {before['size']} bytes but {recorded_in} records {record['bytes']}: "
                f"the file was changed or truncated after it was written; {fix}"
            )
        if not rehash and stamp.get(name) == {"sha256": record["sha256"], **before}:
            checks.append(FileCheck(name, before["size"], hashed=False))
            continue
        if say is not None and before["size"] >= SAY_HASHING_BYTES:
            say(f"hashing {name} ({before['size'] / 1e9:.2f} GB)")
        start = time.perf_counter()
        digest = sha256_file(path)
        if digest != record["sha256"]:
            raise ManifestError(
                f"{path} sha256 {digest[:12]}… does not match {recorded_in} ({record['sha256'][:12]}…): "
                f"the file was changed after it was written; {fix}"
            )
        if _stat_key(path) == before:  # unchanged while it was read: safe to vouch for
            stamp[name] = {"sha256": digest, **before}
            changed = True
        checks.append(FileCheck(name, before["size"], hashed=True, seconds=time.perf_counter() - start))
    if changed:
        write_stamp(export_dir, manifest, stamp)
    return checks


def stamp_export(export_dir: str | os.PathLike, manifest: Manifest) -> Path | None:
    """Stamp every recorded file as it is now, trusting the manifest's sha256: only for the writer of the
    folder (ditf-export), which hashed these very files a moment ago."""
    export_dir = Path(export_dir)
    stamp = {name: {"sha256": record_of(manifest, name)["sha256"], **_stat_key(export_dir / name)}
             for name in manifest.files}
    return write_stamp(export_dir, manifest, stamp)


def write_stamp(export_dir: Path, manifest: Manifest, files: dict[str, dict[str, Any]],
                machines: dict[str, dict[str, Any]] | None = None) -> Path | None:
    """Beside the export if the folder is writable, else in the user cache; None if neither is (the
    check still happened, it is just not remembered). `machines` (the once-per-machine INT8 checks,
    int8_check.py): None keeps what the stamp holds."""
    if machines is None:
        machines = _read_stamp_data(export_dir, manifest).get("machines", {})
    data = {"stamp_version": STAMP_VERSION, "manifest_digest": manifest.digest, "files": files}
    if machines:
        data["machines"] = machines
    text = json.dumps(data, indent=2) + "\n"
    for path in (export_dir / STAMP_FILE, _cache_stamp_path(export_dir)):
        try:
            return write_text_atomic(path, text)
        except OSError:
            continue
    return None


def machine_check(export_dir: str | os.PathLike, manifest: Manifest, key: str) -> dict[str, Any] | None:
    """What the stamp remembers of a check keyed to this machine (None: never checked here)."""
    found = _read_stamp_data(Path(export_dir), manifest).get("machines", {}).get(key)
    return found if isinstance(found, dict) else None


def remember_machine_check(export_dir: str | os.PathLike, manifest: Manifest, key: str,
                           result: dict[str, Any]) -> Path | None:
    export_dir = Path(export_dir)
    data = _read_stamp_data(export_dir, manifest)
    machines = dict(data.get("machines", {}))
    machines[key] = result
    return write_stamp(export_dir, manifest, dict(data.get("files", {})), machines)


def stamp_location(export_dir: str | os.PathLike) -> Path | None:
    """Where the stamp that vouches for this export is, if any."""
    export_dir = Path(export_dir)
    for path in (export_dir / STAMP_FILE, _cache_stamp_path(export_dir)):
        if path.is_file():
            return path
    return None


def _read_stamp(export_dir: Path, manifest: Manifest) -> dict[str, dict[str, Any]]:
    return dict(_read_stamp_data(export_dir, manifest).get("files", {}))


def _read_stamp_data(export_dir: Path, manifest: Manifest) -> dict[str, Any]:
    for path in (export_dir / STAMP_FILE, _cache_stamp_path(export_dir)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(data, dict) and data.get("stamp_version") == STAMP_VERSION
                and data.get("manifest_digest") == manifest.digest and isinstance(data.get("files"), dict)):
            machines = data.get("machines")
            return {"files": data["files"], "machines": machines if isinstance(machines, dict) else {}}
    return {}


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino,
            "device": st.st_dev}


def _cache_stamp_path(export_dir: Path) -> Path:
    root = Path(os.environ.get("DITF_CACHE") or Path.home() / ".cache" / "ditf")
    key = hashlib.sha256(str(export_dir.resolve()).encode()).hexdigest()[:24]
    return root / "verified" / f"{key}.json"
