"""Files the runtime writes and checks: sha256 of a file, and writes that readers never see half done
(files and whole folders).

A write that fails for a reason of the machine (disk full, read-only file system, no permission) becomes
one OutputError naming the path the user asked for (never a hidden temporary file), the cause and the fix
(`write_failure`). Where the size is known before the work, `check_free_space` refuses up front, and
`check_writable` tries the folder before anything long starts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import OutputError

MIB = 1 << 20
# Free space under which an OS error without an errno (numpy's "problem writing element N to file", which
# onnx's external-data writer raises) is taken for a full disk: writes of this toolchain come in chunks of
# megabytes, and a disk this close to full cannot take the next one.
NEARLY_FULL = 64 * MIB
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _human(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / MIB:.0f} MiB"


def existing_folder(path: str | os.PathLike) -> Path:
    """The nearest folder that exists at or above `path` (where a new file or folder there would go)."""
    folder = Path(os.path.abspath(path))
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(path: str | os.PathLike) -> int | None:
    try:
        return shutil.disk_usage(existing_folder(path)).free
    except OSError:
        return None


def is_disk_full(exc: OSError, path: str | os.PathLike) -> bool:
    """`exc` says the disk is full, or carries no errno while the disk under `path` is (nearly) full."""
    if exc.errno in FULL_ERRNOS:
        return True
    if exc.errno is None:
        free = free_bytes(path)
        return free is not None and free < NEARLY_FULL
    return False


def is_write_failure(exc: OSError, path: str | os.PathLike) -> bool:
    """An OS error that comes from the machine refusing a write under `path` (not, say, a missing input)."""
    return isinstance(exc, OutputError) or exc.errno in (*FULL_ERRNOS, errno.EROFS, errno.EACCES, errno.EPERM) \
        or is_disk_full(exc, path)


def write_failure(path: str | os.PathLike, exc: OSError, *, fix: str | None = None) -> OutputError:
    """One line for a failed write of `path`: the path, the cause, the fix (`fix` replaces the default one)."""
    if isinstance(exc, OutputError):
        return exc
    path = Path(path)
    folder = existing_folder(path.parent)
    if is_disk_full(exc, path.parent):
        free = free_bytes(path.parent)
        cause = "the disk is full" + (f" ({_human(free)} free on {folder})" if free is not None else "")
        default_fix = "free some space, or choose another folder, and rerun"
    elif exc.errno == errno.EROFS:
        cause, default_fix = f"{folder} is on a read-only file system", "choose a writable folder"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        cause, default_fix = f"permission denied in {folder}", "choose a folder you can write to"
    else:
        cause, default_fix = (exc.strerror or str(exc) or type(exc).__name__).rstrip("."), "check the folder and rerun"
    error = OutputError(f"cannot write {path}: {cause}; {fix or default_fix}")
    error.errno, error.target, error.cause = exc.errno, path, cause  # for callers that give their own fix
    return error


def check_writable(path: str | os.PathLike, what: str = "") -> None:
    """Try to create (and remove) a folder where `path` will be written: refuses a read-only or forbidden
    place in a moment, before any long work. `what` names the option (`--out`) in the message."""
    folder = existing_folder(Path(path).parent if not Path(path).is_dir() else path)
    try:
        probe = tempfile.mkdtemp(prefix=".ditf-write-check-", dir=folder)
        os.rmdir(probe)
    except OSError as exc:
        raise write_failure(path, exc, fix=f"choose another {what or 'folder'}" if what else None) from None


def check_free_space(path: str | os.PathLike, need: int, what: str, fix: str | None = None) -> None:
    """Refuse up front when the disk under `path` has less than `need` bytes free for `what`."""
    free = free_bytes(path)
    if free is not None and free < need:
        raise OutputError(
            f"cannot write {path}: {what} needs about {_human(need)}, and {existing_folder(path)} has "
            f"{_human(free)} free; {fix or 'free some space, or choose another folder'}"
        )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # named after `path`, not the temporary file the user never asked for
        raise write_failure(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_failure(path, exc) from None
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty hidden folder beside `folder` to write into. When the block ends it replaces
    `folder` in one rename; when the block fails it is removed: a half-written folder never stands at
    `folder`, and an existing one stays until the new one is complete."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as exc:
        raise write_failure(folder, exc) from None
    try:
        tmp.chmod(0o755)  # mkdtemp makes 0700; outputs are meant to be shared
        yield tmp
        _replace_folder(tmp, folder)
    except BaseException as exc:
        # Judged before the half-written folder is removed: removing it frees the space that ran out.
        failure = write_failure(folder, exc) if isinstance(exc, OSError) and is_write_failure(exc, tmp) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure from None
        raise


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Rename `tmp` to `folder`; an existing `folder` is moved aside first (and back if the rename fails)."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = folder.parent / f".{folder.name}.old-{secrets.token_hex(4)}"
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
