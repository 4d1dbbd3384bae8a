"""Progress for long work: a tqdm bar on a terminal, plain lines everywhere else.

A tqdm bar redraws itself with carriage returns; in a log file, a CI log or a pipe those pile up
on one ever-growing line that runs into whatever is printed next. When the stream is not a
terminal, `progress_bar` prints one short line now and then instead ("extract: 40/100 img (40%)"),
each ending with a newline, and a last one when the work ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

# Without a terminal: a line every LINE_EVERY_FRACTION of the work (but not within LINE_MIN_S of the last
# one), at least every LINE_EVERY_S seconds, and a last one when done: quick work prints one line.
LINE_EVERY_S = 30.0
LINE_MIN_S = 5.0
LINE_EVERY_FRACTION = 0.1


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 file: IO[str] | None = None, leave: bool = True) -> Any:
    """A progress bar over `iterable` (or updated by hand up to `total`), on `file` (default stderr).

    Either object has `update(n)`, `write(text)`, `close()`, works as a context manager and, when
    given an iterable, iterates over it.
    """
    file = sys.stderr if file is None else file
    if _is_terminal(file):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, file=file)


def _is_terminal(file: IO[str]) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """tqdm's small surface, printing whole lines: for logs, pipes and CI."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", file: IO[str] | None = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.file = sys.stderr if file is None else file
        self.n = 0
        self.postfix = ""
        self._started = self._last_time = time.monotonic()
        self._last_n = 0
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress was not given an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        step = max(1, round(self.total * LINE_EVERY_FRACTION)) if self.total else None
        since = now - self._last_time
        due = since >= LINE_EVERY_S or (step is not None and self.n - self._last_n >= step and since >= LINE_MIN_S)
        if due and self.n != self.total:  # the last line is close()'s
            self._line(now)

    def set_postfix_str(self, text: str) -> None:
        """tqdm's note after the counts: without a terminal it joins the next line instead."""
        self.postfix = text

    def write(self, text: str, file: IO[str] | None = None) -> None:
        print(text, file=file or self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n:
                self._line(time.monotonic(), done=True)

    def _line(self, now: float, done: bool = False) -> None:
        self._last_time, self._last_n = now, self.n
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = now - self._started
        timing = f", {elapsed:.1f} s" if done else ""
        note = f" ({self.postfix})" if self.postfix and not done else ""
        self.write(f"{self.desc}: {count} {self.unit}{percent}{timing}{note}")
