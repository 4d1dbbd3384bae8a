"""An INT8 export's accuracy on THIS machine's integer kernels, checked once per machine.

The INT8 gate ran where the export was made. Another CPU may run other integer kernels (cpu_info.py: VNNI or
not), so the first time an INT8 export is loaded on the CPU of a machine (a CPU class, an onnxruntime
version), the export's reference.safetensors inputs are run and compared with its PyTorch features at the
INT8 tolerance; the result is remembered in the export's verification stamp (verification.py), so later loads
cost nothing. A machine whose kernels lose the gate's accuracy is refused with the numbers and the way out.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from .cpu_info import this_cpu
from .errors import BackendError
from .manifest import REFERENCE_FILE
from .verification import machine_check, remember_machine_check

if TYPE_CHECKING:
    from .extractor import Extractor

INTEGER_PRECISIONS = ("int8",)  # precisions whose graphs run integer kernels on onnxruntime's CPU provider


def machine_key(graph_file: str, exact_option: bool) -> str:
    """What the result depends on: the CPU, onnxruntime's version and options, and which graph ran."""
    import onnxruntime

    from .backends.onnxrt import X64_QUANT_PRECISION

    cpu = this_cpu()
    return (f"{graph_file} | {cpu.name} | {cpu.model} | onnxruntime {onnxruntime.__version__} | "
            f"{X64_QUANT_PRECISION}={int(exact_option)}")


def needs_check(extractor: Extractor) -> bool:
    runner = extractor.runner
    return (extractor.manifest.precision in INTEGER_PRECISIONS and getattr(runner, "backend", "") == "onnxruntime"
            and all(p == "CPUExecutionProvider" for p in _providers(runner))
            and (extractor.export_dir / REFERENCE_FILE).is_file())


def _providers(runner: Any) -> list[str]:
    loader = getattr(runner, "session_loader", None)
    return [p[0] if isinstance(p, (tuple, list)) else str(p) for p in getattr(loader, "providers", ["?"])]


def check_this_machine(extractor: Extractor, *, force: bool = False) -> dict[str, Any]:
    """Run (or recall) the INT8 check for this machine; refuse with the reason if it fails."""
    from .backends.onnxrt import exact_int8_option

    runner = extractor.runner
    runner.activate()  # (a no-op once loaded) the session's own options say which kernels run
    loader = getattr(runner, "session_loader", None)
    key = machine_key(getattr(getattr(loader, "model_path", None), "name", "model.onnx"),
                      exact_int8_option(runner.session))
    result = None if force else machine_check(extractor.export_dir, extractor.manifest, key)
    if result is None:
        parity = extractor.verify_reference()
        result = {"passed": bool(parity), "cosine_min": float(parity.min_cosine),
                  "max_rel_error": float(parity.rel_error), "nn_agreement": float(parity.nn_agreement),
                  "cpu": this_cpu().to_dict(),
                  "checked": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if parity.failures:
            result["failures"] = list(parity.failures)
        remember_machine_check(extractor.export_dir, extractor.manifest, key, result)
    if not result.get("passed"):
        gate_cpu = (extractor.manifest.parity.get("machine") or {}).get("cpu_class", "an unrecorded CPU")
        raise BackendError(
            f"this CPU ({this_cpu().name}; integer kernels: {this_cpu().int8_kernels}) loses the INT8 gate's "
            f"accuracy on {extractor.export_dir}: on its reference inputs, cosine min {result['cosine_min']:.5f}, "
            f"relative error {result['max_rel_error']:.4f} ({'; '.join(result.get('failures', [])) or 'failed'}); "
            f"the gate passed on {gate_cpu}. Run the fp32 export of this model here, or run this one where it "
            f"passes (`ditf verify {extractor.export_dir}` re-checks)"
        )
    return result
