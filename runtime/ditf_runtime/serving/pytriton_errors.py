"""A refused request's error, one line, for every Triton client (`ditf serve`).

PyTriton's python-backend model (its proxy model.py, copied into the model store) re-raises a failed
batch's error inside its own traceback, around the one of our inference callable: the official
`tritonclient` got 29 lines with the reason on the last one (the project's client digs it out). Triton's
python backend can instead answer each request with an error response, whose message is sent as it is.

`one_line_errors` patches the copy in our own workspace (PyTriton's package is untouched): a failed batch
answers each of its requests with the reason alone ("InputError: pixels hold NaN or infinite values"), with
INVALID_ARG (HTTP 400) when the request is at fault, else INTERNAL (HTTP 500). Should PyTriton's file change,
it is left as it is (`one_line_errors` returns False) and the serving tests fail on the message.
"""

from __future__ import annotations

from pathlib import Path

RAISE_BATCH_ERROR = """\
                if triton_responses_or_error is not None and isinstance(triton_responses_or_error, Exception):
                    raise triton_responses_or_error
"""
ANSWER_BATCH_ERROR = """\
                if triton_responses_or_error is not None and isinstance(triton_responses_or_error, Exception):
                    return _ditf_error_responses(triton_requests, triton_responses_or_error)
"""
ERROR_RESPONSES = r'''

# -- added by ditf_runtime.serving.pytriton_errors: one line per failed request, not a traceback ----------
_DITF_REQUEST_ERRORS = frozenset(%(request_errors)r)


def _ditf_error_responses(triton_requests, error):
    import re

    text = error.message() if callable(getattr(error, "message", None)) else str(error)
    reason, request_error = text.strip().splitlines()[-1] if text.strip() else "the request failed", False
    for line in reversed(text.splitlines()):  # the exception line closes the inference callable's traceback
        found = re.match(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception)): (.*)$", line.strip())
        if found:
            reason, request_error = f"{found.group(1)}: {found.group(2)}", found.group(1) in _DITF_REQUEST_ERRORS
            break
    kind = pb_utils.TritonError
    code = getattr(kind, "INVALID_ARG" if request_error else "INTERNAL", None)
    failure = kind(reason) if code is None else kind(reason, code)
    return [pb_utils.InferenceResponse(output_tensors=[], error=failure) for _ in triton_requests]
'''


def request_error_names() -> list[str]:
    """The errors that put the fault on the request: InputError and its subclasses (MemoryBudgetError...)."""
    from ..errors import InputError
    from ..memory import MemoryBudgetError  # noqa: F401 - imported so that it is among the subclasses

    names, todo = set(), [InputError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return sorted(names)


def one_line_errors(model_folder: Path) -> bool:
    """Patch the PyTriton model.py in `model_folder`/1 (our workspace's copy); False if its text was not recognised."""
    path = Path(model_folder) / "1" / "model.py"
    try:
        text = path.read_text()
    except OSError:
        return False
    if RAISE_BATCH_ERROR not in text:
        return False
    patched = text.replace(RAISE_BATCH_ERROR, ANSWER_BATCH_ERROR)
    path.write_text(patched + ERROR_RESPONSES % {"request_errors": tuple(request_error_names())})
    return True
