"""Progress without a terminal: whole lines, a few of them, never carriage returns."""

from __future__ import annotations

import io

from ditf_runtime import progress
from ditf_runtime.progress import LineProgress, progress_bar


def test_without_a_terminal_progress_is_whole_lines(monkeypatch):
    clock = iter(range(0, 10_000, 10))  # every update 10 s later
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    bar = progress_bar(total=20, desc="extract", unit="img", file=stream)
    assert isinstance(bar, LineProgress)  # a StringIO is not a terminal
    with bar:
        for _ in range(20):
            bar.update(1)
        bar.write("skipped: a.png")
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0] == "extract: 2/20 img (10%)" and lines[-1].startswith("extract: 20/20 img (100%), ")
    assert "skipped: a.png" in lines and len(lines) <= 12


def test_quick_work_prints_one_line_and_iterates():
    stream = io.StringIO()
    items = list(progress_bar(range(5), desc="calibration", unit="input", file=stream))
    assert items == [0, 1, 2, 3, 4]
    assert stream.getvalue().count("\n") == 1 and stream.getvalue().startswith("calibration: 5/5 input (100%)")
