"""`ditf verify`: hash an export's files once against its manifest, and remember that they matched.

Loading trusts a file whose size, mtime, ctime and inode are unchanged since it was last hashed
(verification.py), so a multi-GB export is hashed here (or by ditf-export), not on every load.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..manifest import Manifest
from .options import friendly_errors


@click.command("verify")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@friendly_errors
def verify(export_dir: Path) -> None:
    """Check EXPORT_DIR: its manifest's digest, then every recorded file's size and sha256 (always re-hashed
    here). Writes the stamp that lets later loads skip hashing unchanged files."""
    from ..verification import check_files, stamp_location

    manifest = Manifest.load(export_dir)  # refuses a manifest edited by hand
    click.echo(f"{export_dir}: manifest digest OK ({manifest.digest[:19]}…)")
    checks = check_files(export_dir, manifest, rehash=True, say=lambda msg: click.echo("  " + msg, err=True))
    for c in checks:
        click.echo(f"  {c.name}: {c.bytes / 1e6:,.1f} MB, sha256 matches ({c.seconds:.1f} s)")
    where = stamp_location(export_dir)
    click.echo(f"{len(checks)} files match the manifest; "
               + (f"stamp: {where}" if where else "no stamp written (neither the folder nor the user cache is writable)"))
