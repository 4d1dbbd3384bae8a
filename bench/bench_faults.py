"""Faults, each checked end to end with the real commands; prints one table row per fault.

    sudo python bench/bench_faults.py --export EXPORT_DIR [--modes kill,extract-full,export-full,corrupt]

- kill:         `ditf serve` SIGKILLed (with Triton) while a client writes a folder of features through it:
                the client's error, files left (all complete, none half-written), the rerun on a new server.
- extract-full: `ditf extract` into a small tmpfs: refused up front when the files cannot fit; then a disk
                another process fills during the run: the error, what is left, and the rerun after freeing
                space (files compared byte for byte with an uninterrupted run on a normal disk).
- export-full:  `ditf-export --model flux-tiny` into a small tmpfs: refused up front; filled during the
                export: the error, nothing left; rerun after freeing space (files compared by sha256 with
                a normal export).
- corrupt:      one byte of model.onnx.data flipped (and one appended to the CPU variant): `ditf extract`
                and `ditf verify` refuse by the recorded sha256.

The full-disk modes mount tmpfs (root, or CAP_SYS_ADMIN); without that they are reported as skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving_helpers import ServerProcess, session_pids  # noqa: E402

ROWS: list[tuple[str, str, str]] = []


def row(fault: str, outcome: str, detail: str) -> None:
    ROWS.append((fault, outcome, detail.replace("|", "\\|")))
    print(f"[{fault}] {outcome}: {detail}", flush=True)


def ditf(*args, check=False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ditf_runtime.cli", *map(str, args)], capture_output=True, text=True,
                          check=check)


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    traceback = "Traceback" in result.stderr
    return (lines[-1] if lines else result.stderr.strip().splitlines()[-1]) + (" [TRACEBACK]" if traceback else "")


def images_folder(root: Path, count: int) -> Path:
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (90 + i % 7, 120 + i % 5, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def leftovers(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.suffix != suffix and p.name != "ditf-extract.json") \
        if folder.exists() else []


class Tmpfs:
    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True)

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False)


def can_mount(root: Path) -> bool:
    try:
        Tmpfs(root / "probe", "1m").close()
        return True
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False


def fill_when(trigger, target: Path, stop: threading.Event) -> threading.Thread:
    """Another process's writes: once trigger() is true, fill the disk of `target` to the last byte."""

    def run() -> None:
        while not trigger() and not stop.is_set():
            time.sleep(0.005)
        try:
            with open(target, "wb") as f:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- modes ---------------------------------------------------------------------------------------


def mode_kill(export: Path, work: Path) -> None:
    from ditf_runtime.serving.client import FeatureClient, ServerError, extract_folder
    from ditf_runtime.storage import load_features

    images, out = images_folder(work / "kill", 60), work / "kill" / "out"
    server = ServerProcess.ditf_serve(export, work / "kill" / "serve.log").wait_ready()
    outcome: dict = {}

    def client() -> None:
        with FeatureClient(server.url, concurrency=2) as c:
            try:
                outcome["report"] = extract_folder(c, [images], out, size=256)
            except ServerError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    while len(list(out.glob("*.safetensors"))) < 5:
        time.sleep(0.01)
    server.kill()
    thread.join(60)
    written = sorted(out.glob("*.safetensors"))
    complete = 0
    for path in written:
        load_features(path)
        complete += 1
    row("server killed mid-request", "clear error" if "error" in outcome else "NO ERROR",
        f"client: `{outcome.get('error')}`; {len(written)} of 60 files written, {complete} readable, "
        f"leftovers {leftovers(out, '.safetensors')}, processes left {len(session_pids(server.process.pid))}")
    with ServerProcess.ditf_serve(export, work / "kill" / "serve2.log") as again:
        with FeatureClient(again.url, concurrency=2) as c:
            report = extract_folder(c, [images], out, size=256)
    row("server killed: rerun", "resumed", f"new server: {report.skipped} skipped, {report.written} written, "
        f"{len(report.failed)} failed")


def mode_extract_full(export: Path, work: Path) -> None:
    root = work / "extract"
    images = images_folder(root, 40)
    reference = root / "reference"
    ditf("extract", images, "--model", export, "--out", reference, "--size", "512", check=True)
    need = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    disk = Tmpfs(root / "disk", f"{max(need // 2, 64 << 10)}")
    try:
        out = disk.path / "features"
        small = ditf("extract", images, "--model", export, "--out", out, "--size", "512")
        row("ditf extract, disk too small", "refused up front" if not out.exists() else "WROTE",
            f"{error_line(small)} (exit {small.returncode}, OUT created: {out.exists()})")
        disk.resize(f"{need * 4}")
        stop = threading.Event()
        filler = disk.path / "someone-elses.bin"
        fill_when(lambda: len(list(out.glob("*.safetensors"))) >= 5, filler, stop)
        start = time.monotonic()
        full = ditf("extract", images, "--model", export, "--out", out, "--size", "512")
        stop.set()
        written = sorted(out.glob("*.safetensors"))
        row("ditf extract, disk fills up", f"exit {full.returncode} after {time.monotonic() - start:.1f} s",
            f"{error_line(full)}; {len(written)} files left, leftovers {leftovers(out, '.safetensors')}")
        filler.unlink()
        again = ditf("extract", images, "--model", export, "--out", out, "--size", "512")
        same = all((out / p.name).read_bytes() == p.read_bytes() for p in reference.glob("*.safetensors"))
        row("ditf extract, rerun after freeing space", f"exit {again.returncode}",
            f"{again.stderr.strip().splitlines()[0]}; all 40 files byte-identical to an uninterrupted run: {same}")
    finally:
        disk.close()


def mode_export_full(export: Path, work: Path) -> None:
    root = work / "export"
    reference = export  # a flux-tiny export made by the same command
    need = sum(p.stat().st_size for p in reference.iterdir() if p.is_file())
    disk = Tmpfs(root / "disk", f"{need // 4}")
    # the installed command (ditf_export.cli has no `python -m` entry: that would exit 0 without exporting)
    command = [str(Path(sys.executable).parent / "ditf-export"), "--model", "flux-tiny", "--out"]
    try:
        out = disk.path / "flux-tiny"
        start = time.monotonic()
        small = subprocess.run([*command, str(out)], capture_output=True, text=True)
        row("ditf-export, disk too small", f"exit {small.returncode} after {time.monotonic() - start:.1f} s",
            f"{error_line(small)}; left on the disk: {sorted(p.name for p in disk.path.iterdir())}")
        # room for ditf-export's up-front check (the fp32 weights + 64 MiB, export.py's _folder_bytes), so the
        # export starts writing; then another process fills the disk to the last byte
        disk.resize(f"{(64 << 20) + need * 4}")
        stop = threading.Event()
        filler = disk.path / "someone-elses.bin"
        fill_when(lambda: any(p.name.startswith(".flux-tiny.tmp-") and any(p.iterdir()) for p in disk.path.iterdir()
                              if p.is_dir()), filler, stop)
        start = time.monotonic()
        full = subprocess.run([*command, str(out)], capture_output=True, text=True)
        stop.set()
        filled = filler.exists()
        row("ditf-export, disk fills up", f"exit {full.returncode} after {time.monotonic() - start:.1f} s",
            f"{error_line(full)}; disk filled by another process during the export: {filled}; left on the disk: "
            f"{sorted(p.name for p in disk.path.iterdir() if p != filler)}")
        filler.unlink(missing_ok=True)
        again = subprocess.run([*command, str(out)], capture_output=True, text=True)
        same = {p.name: sha256(p) == sha256(reference / p.name) for p in sorted(out.iterdir()) if p.is_file()} \
            if again.returncode == 0 else {}
        row("ditf-export, rerun after freeing space", f"exit {again.returncode}",
            f"sha256 equal to a normal export: {same}")
    finally:
        disk.close()


def mode_corrupt(export: Path, work: Path) -> None:
    copy = work / "corrupt" / export.name
    shutil.copytree(export, copy)
    images = images_folder(work / "corrupt", 2)
    data = copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    extract = ditf("extract", images, "--model", copy, "--out", work / "corrupt" / "out")
    verify = ditf("verify", copy)
    row("model.onnx.data, one bit flipped", f"extract exit {extract.returncode}, verify exit {verify.returncode}",
        f"extract: {error_line(extract)}; verify: {(verify.stdout + verify.stderr).strip().splitlines()[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="a flux-tiny export (ditf-export --model flux-tiny)")
    parser.add_argument("--modes", default="kill,extract-full,export-full,corrupt")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ditf-faults-"))
    mountable = can_mount(work)
    modes = {"kill": mode_kill, "extract-full": mode_extract_full, "export-full": mode_export_full,
             "corrupt": mode_corrupt}
    try:
        for name in args.modes.split(","):
            if name.endswith("-full") and not mountable:
                row(name, "skipped", "mounting a tmpfs needs root (CAP_SYS_ADMIN)")
                continue
            modes[name](args.export.resolve(), work)
    finally:
        for mount in sorted(work.rglob("disk"), reverse=True):
            subprocess.run(["umount", str(mount)], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print("\n| fault | outcome | what the user sees / what is left |")
    print("| --- | --- | --- |")
    for fault, outcome, detail in ROWS:
        print(f"| {fault} | {outcome} | {detail} |")


if __name__ == "__main__":
    main()
