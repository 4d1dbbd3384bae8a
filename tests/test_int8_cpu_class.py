"""INT8 on every x86 CPU class (issue 21): exact integer kernels everywhere, the gate's CPU class recorded, and
an INT8 export checked once per machine on its first CPU load.

onnxruntime's U8S8 integer GEMM saturates on x86 without VNNI; `session.x64quantprecision=1` (set by
create_session for every session) switches those CPUs to exact U8U8 kernels. The two tests about one kind of
kernel say so and skip on the other kind, by the CPU's own flags.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from ditf_runtime import load
from ditf_runtime.backends.onnxrt import X64_QUANT_PRECISION, create_session, exact_int8_option
from ditf_runtime.cpu_info import classify, this_cpu
from ditf_runtime.errors import BackendError
from ditf_runtime.int8_check import check_this_machine, machine_key
from ditf_runtime.manifest import REFERENCE_FILE, Manifest
from ditf_runtime.parity import compare
from ditf_runtime.verification import STAMP_FILE, machine_check, remember_machine_check

VNNI = "VNNI" in this_cpu().name
X86 = this_cpu().name.startswith("x86-64")


def test_cpu_classes_from_flags():
    assert classify({"avx2", "avx512f", "avx512_vnni"}, "x86_64").name == "x86-64 AVX-512 VNNI"
    assert classify({"avx2", "avx_vnni"}, "x86_64").name == "x86-64 AVX-VNNI"
    avx2 = classify({"sse4_1", "avx2"}, "x86_64")
    assert avx2.name == "x86-64 AVX2 (no VNNI)" and "U8U8" in avx2.int8_kernels
    assert classify({"avx2", "avx512f"}, "x86_64").name == "x86-64 AVX-512 (no VNNI)"
    assert classify({"asimd"}, "aarch64").name == "aarch64"


def test_sessions_ask_for_exact_integer_kernels_where_the_cpu_needs_them(int8_dir):
    assert classify({"avx2"}, "x86_64").needs_exact_int8_option
    assert not classify({"avx2", "avx512_vnni"}, "x86_64").needs_exact_int8_option
    assert not classify({"asimd"}, "aarch64").needs_exact_int8_option
    session = create_session(int8_dir / "model.onnx")
    assert exact_int8_option(session) == this_cpu().needs_exact_int8_option


@pytest.fixture(scope="module")
def int8_dir(flux_tiny_precision_export):
    return flux_tiny_precision_export("int8")


@pytest.fixture
def int8_copy(int8_dir, tmp_path):
    """A private copy: these tests write the folder's verification stamp."""
    out = tmp_path / "int8"
    shutil.copytree(int8_dir, out, ignore=shutil.ignore_patterns(STAMP_FILE))
    return out


def _reference_run(folder, option: str | None):
    from safetensors.numpy import load_file

    options = ort.SessionOptions()
    if option is not None:
        options.add_session_config_entry(X64_QUANT_PRECISION, option)
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ref = load_file(str(folder / REFERENCE_FILE))
    feed = {i.name: ref[i.name] for i in session.get_inputs()}
    return session.run(None, feed)[0], ref["features"]


@pytest.mark.skipif(not X86 or VNNI, reason=f"about x86 CPUs without VNNI; this one is {this_cpu().name}")
def test_without_vnni_the_option_is_what_keeps_int8_accurate(int8_dir):
    exact, expected = _reference_run(int8_dir, "1")
    saturating, _ = _reference_run(int8_dir, None)
    good, bad = compare(exact, expected, "int8"), compare(saturating, expected, "int8")
    assert good and good.min_cosine > bad.min_cosine, (good, bad)


@pytest.mark.skipif(not VNNI, reason=f"about VNNI CPUs; this one is {this_cpu().name}")
def test_with_vnni_the_option_changes_nothing(int8_dir):
    with_option, _ = _reference_run(int8_dir, "1")
    without, _ = _reference_run(int8_dir, None)
    np.testing.assert_array_equal(with_option, without)


def test_the_manifest_records_the_cpu_class_the_gate_ran_on(int8_dir):
    machine = Manifest.load(int8_dir).parity["machine"]
    assert machine["cpu_class"] == this_cpu().name
    assert machine["int8_kernels"] == this_cpu().int8_kernels
    assert machine["onnxruntime"] == ort.__version__


def test_first_cpu_load_checks_the_reference_once_per_machine(int8_copy, monkeypatch):
    from ditf_runtime.extractor import Extractor

    calls = []
    real = Extractor.verify_reference
    monkeypatch.setattr(Extractor, "verify_reference", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    with load(int8_copy):
        pass
    manifest = Manifest.load(int8_copy)
    key = machine_key("model.onnx", this_cpu().needs_exact_int8_option)
    remembered = machine_check(int8_copy, manifest, key)
    assert calls == [1] and remembered["passed"] and remembered["cosine_min"] >= 0.995
    assert remembered["cpu"]["name"] == this_cpu().name
    with load(int8_copy):  # remembered: not run again
        pass
    assert calls == [1]
    stamp = json.loads((int8_copy / STAMP_FILE).read_text())
    assert set(stamp["files"]) >= {"model.onnx", "model.onnx.data"}  # the file stamp survives beside it


def test_a_machine_whose_kernels_lost_the_gate_is_refused(int8_copy):
    """A remembered failure on this machine (what an AVX2 CPU without the exact kernels produced) refuses
    the load, with the numbers and the way out."""
    manifest = Manifest.load(int8_copy)
    remember_machine_check(int8_copy, manifest, machine_key("model.onnx", this_cpu().needs_exact_int8_option), {
        "passed": False, "cosine_min": 0.9628, "max_rel_error": 0.21, "nn_agreement": 0.8,
        "failures": ["cosine min 0.96282 < 0.995"]})
    with pytest.raises(BackendError, match=r"loses the INT8 gate's accuracy.*0\.96280.*fp32 export"):
        load(int8_copy)
    # `ditf verify` (and check_this_machine(force=True)) re-checks instead of trusting the memory
    with load(int8_copy, verify=False) as extractor:
        assert check_this_machine(extractor, force=True)["passed"]
    with load(int8_copy):
        pass


def test_verify_reports_the_int8_check(int8_copy):
    from click.testing import CliRunner

    from ditf_runtime.cli import main

    result = CliRunner().invoke(main, ["verify", str(int8_copy)])
    assert result.exit_code == 0, result.output
    assert f"INT8 on this CPU ({this_cpu().name}" in result.output and "PASS" in result.output


def test_fp32_exports_are_not_checked(flux_tiny_export, monkeypatch):
    from ditf_runtime.extractor import Extractor

    monkeypatch.setattr(Extractor, "verify_reference", lambda *a, **k: pytest.fail("fp32 needs no kernel check"))
    with load(flux_tiny_export):
        pass
