"""ditf-runtime is torch-free by construction: its wheel, a clean venv, and an import blocker."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it offline in a second or two.
    subprocess.run(
        PIP + ["wheel", str(REPO / "runtime"), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("ditf_runtime-*.whl")
    return built


def requirement_names(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    requires = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower(): r for r in requires}


def test_wheel_requires_no_torch(wheel):
    requires = requirement_names(wheel)
    unconditional = {name for name, spec in requires.items() if "extra ==" not in spec}
    assert unconditional == {"numpy", "pillow", "onnxruntime", "click", "safetensors", "tqdm"}
    assert not any(name in requires for name in ("torch", "diffusers", "transformers"))
    assert "tensorrt" in requires and "extra ==" in requires["tensorrt"]  # only as the [tensorrt] extra
    assert "extra ==" in requires["tensorrt-rtx-cu13"]  # and TensorRT for RTX only as [tensorrt-rtx]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "ditf_runtime/backends/trt/__init__.py" in names and not any(n.startswith("tests/") for n in names)
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "ditf = ditf_runtime.cli:main" in entry_points


USE_THE_RUNTIME = textwrap.dedent("""
    import sys
    import numpy as np
    import ditf_runtime
    from ditf_runtime.cli import main  # the CLI module too
    extractor = ditf_runtime.load(sys.argv[1])
    assert extractor.verify_reference()
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    a, b = extractor.extract([image, image[:, ::-1].copy()])
    ditf_runtime.transfer_keypoints(a, b, [[3, 4], [60, 40]])
    ditf_runtime.mutual_nn_matches(a, b)
    ditf_runtime.pca_image(a)
    # onnx (the graph library) is a test-only dependency too; onnxruntime does not need it
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "onnx"))
    assert not heavy, heavy
    print("ok", extractor.backend)
""")


BLOCKER = textwrap.dedent("""
    import sys
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers", "transformers"):
                raise ImportError(f"{name} is blocked: ditf_runtime must not import it")
            return None
    sys.meta_path.insert(0, Blocker())
""")


def test_runtime_works_with_torch_blocked(export_dir):
    """In the development venv (torch installed), nothing on the runtime's path imports it."""
    process = subprocess.run(
        [sys.executable, "-c", BLOCKER + USE_THE_RUNTIME, str(export_dir)], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "ok onnxruntime"


def test_wheel_installs_and_runs_in_a_clean_venv(wheel, export_dir, tmp_path):
    """A plain venv (no system site-packages) gets the wheel and its dependencies, nothing else."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The development venv's pip installs into the clean one, from the configured indexes
    # (local wheel mirrors on the dev/CI machines, so this is offline there).
    # Short timeout, no retries: an unreachable remote index must not stall the run for minutes.
    install = subprocess.run(
        PIP + ["--python", str(python), "install", "-q", "--timeout", "15", "--retries", "0", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0 and re.search(r"(?i)(connection|network|resolve host|timed out)", install.stderr):
        pytest.skip(f"no package index reachable to install the runtime's dependencies: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    check = subprocess.run(PIP + ["--python", str(python), "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    absent = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'diffusers', 'transformers') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert absent.stdout.strip() == "[]"
    used = subprocess.run(
        [str(python), "-c", USE_THE_RUNTIME, str(export_dir)], capture_output=True, text=True, timeout=120
    )
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip() == "ok onnxruntime"
    cli = subprocess.run([str(venv / "bin" / "ditf"), "--help"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "build-engine" in cli.stdout
