"""`ditf verify`: hash an export's files once against its manifest, and remember that they matched.

Loading trusts a file whose size, mtime, ctime and inode are unchanged since it was last hashed
(verification.py), so a multi-GB export is hashed here (or by ditf-export), not on every load.

Every file the runtime may open is checked against the record that vouches for it: the manifest's files,
the CPU variant (model.cpu.onnx against model.cpu.json, which must name this export's model.onnx and
model.onnx.data) and each TensorRT engine (model.plan against its engine.json, which must name them too).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..int8_check import INTEGER_PRECISIONS
from ..manifest import Manifest
from .options import DEVICE, friendly_errors


@click.command("verify")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default=None,
              help="Also run reference.safetensors' inputs on this backend and judge them at the export's precision.")
@click.option("--device", type=DEVICE, default=None, help="With --backend: cpu, cuda or cuda:N.")
@friendly_errors
def verify(export_dir: Path, backend: str | None, device: str | None) -> None:
    """Check EXPORT_DIR: its manifest's digest, then every recorded file's size and sha256 (always re-hashed
    here), the CPU variant against model.cpu.json and each engine's plan against its engine.json. Writes the
    stamp that lets later loads skip hashing unchanged files. With --backend, the export's reference inputs
    run there and are compared with its PyTorch features (an engine built from the manifest's own profiles,
    `ditf build-engine EXPORT`, holds them)."""
    from ..verification import check_files, check_recorded, stamp_location

    manifest = Manifest.load(export_dir)  # refuses a manifest edited by hand
    click.echo(f"{export_dir}: manifest digest OK ({manifest.digest[:19]}…)")
    say = lambda msg: click.echo("  " + msg, err=True)  # noqa: E731
    checks = check_files(export_dir, manifest, rehash=True, say=say)
    checks += cpu_variant_checks(export_dir, manifest, say)
    plans = engine_plans(export_dir, manifest)
    if plans:
        checks += check_recorded(export_dir, manifest, plans, rehash=True, say=say, recorded_in="its engine.json",
                                 fix=f"rebuild the engine with `ditf build-engine {export_dir} ... --force`")
    for c in checks:
        click.echo(f"  {c.name}: {c.bytes / 1e6:,.1f} MB, sha256 matches ({c.seconds:.1f} s)")
    where = stamp_location(export_dir)
    click.echo(f"{len(checks)} files match their records; "
               + (f"stamp: {where}" if where else "no stamp written (neither the folder nor the user cache is writable)"))
    if backend is not None:
        from ..loading import load

        with load(export_dir, backend=backend, device=device or ("cuda" if backend == "tensorrt" else "cpu"),
                  verify=False) as extractor:  # hashed just above
            result = extractor.verify_reference()
        click.echo(f"reference.safetensors on {extractor.backend} ({manifest.precision}): {result}")
        if not result:
            raise click.ClickException(f"{export_dir} does not reproduce its reference on {backend} at the "
                                       f"{manifest.precision} gate")
    if backend is None and manifest.precision in INTEGER_PRECISIONS:  # the CPU's integer kernels, once per machine
        check_integer_kernels_here(export_dir)


def check_integer_kernels_here(export_dir: Path) -> None:
    """An INT8 export: its reference, run on this CPU's integer kernels, must still pass its tolerance (always
    re-run here; the result is remembered for later loads on this machine)."""
    from ..cpu_info import this_cpu
    from ..int8_check import check_this_machine
    from ..loading import load

    click.echo(f"INT8 on this CPU ({this_cpu().name}; integer kernels: {this_cpu().int8_kernels}):")
    with load(export_dir, device="cpu", verify=False) as extractor:  # the graph a load would run
        result = check_this_machine(extractor, force=True)  # raises with the reason when it fails
    gate = Manifest.load(export_dir).parity.get("machine") or {}
    click.echo(f"  reference inputs: cosine min {result['cosine_min']:.5f}, relative error "
               f"{result['max_rel_error']:.4f}, NN agreement {result['nn_agreement']:.3f}: PASS "
               f"(the export's gate ran on {gate.get('cpu_class', 'an unrecorded CPU')})")


def cpu_variant_checks(export_dir: Path, manifest: Manifest, say) -> list:
    """The CPU variant, when the folder has one: its record must be this export's and the graph must match it
    (what loading on the CPU checks before it opens model.cpu.onnx); always hashed (a graph of KB to MB)."""
    import time

    from ..cpu_variant import RECORD_FILE, VARIANT_FILE, check_variant
    from ..verification import FileCheck

    path = export_dir / VARIANT_FILE
    if not (export_dir / RECORD_FILE).is_file():
        if path.is_file():  # never opened without its record (cpu_variant.choose_graph): not an error, but odd
            say(f"{VARIANT_FILE} has no {RECORD_FILE} (an interrupted `ditf optimize-cpu`?): the runtime does not "
                f"use it; run `ditf optimize-cpu {export_dir}` again, or delete it")
        return []
    start = time.perf_counter()
    check_variant(export_dir, manifest)  # the record's sources, then the graph's size and sha256
    return [FileCheck(VARIANT_FILE, path.stat().st_size, hashed=True, seconds=time.perf_counter() - start)]


def engine_plans(export_dir: Path, manifest: Manifest) -> dict[str, dict]:
    """Each TensorRT engine's model.plan with the sha256 its engine.json records (a plan without one is refused:
    every file the runtime opens needs a record); an engine built from other ONNX files than the manifest
    records is refused, as loading would refuse it."""
    from ..backends.trt.records import (ENGINE_FILE, ENGINE_RECORD_FILE, ONNX_FILES, engine_folders,
                                        read_engine_record)
    from ..errors import BackendError

    plans = {}
    for folder in engine_folders(export_dir):
        record = read_engine_record(folder)
        if not isinstance(record.get("plan_sha256"), str):
            raise BackendError(f"{folder / ENGINE_RECORD_FILE} records no plan_sha256; rebuild the engine with "
                               f"`ditf build-engine {export_dir} ... --force`")
        recorded = record.get("onnx_sha256") or {}
        for name in ONNX_FILES:
            if recorded.get(name) != manifest.files.get(name, {}).get("sha256"):
                raise BackendError(f"{folder / ENGINE_RECORD_FILE}: the engine was built from a different {name} "
                                   f"than this export's manifest records; rebuild the engine with "
                                   f"`ditf build-engine {export_dir} ... --force`")
        plans[(folder / ENGINE_FILE).relative_to(export_dir).as_posix()] = {
            "sha256": record["plan_sha256"], "bytes": record.get("plan_bytes")}
    return plans
