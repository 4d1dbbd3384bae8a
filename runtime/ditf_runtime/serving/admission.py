"""One memory budget per server: graph calls that run at once must fit it together.

Triton runs the `extract` and `match` models on threads of their own (and a fused server runs its two graphs
on two more), so a server can have several graph calls in flight. Each call's own check (memory.check) sees
only the memory free when it starts, not what the calls already running will still allocate: two large
requests could each pass and together run the machine out of memory. `Admission` keeps one account per
server: a call reserves its estimate (memory.estimate_runs) before it runs and gives it back when it ends.

- A call that fits the budget beside the calls in flight runs at once.
- A call that could never fit (alone, with the machine as free as it is now) is refused at once with
  memory.MemoryBudgetError, which names a --size that fits: the request is the problem.
- Otherwise it waits (in arrival order) until enough calls have finished; after `wait_s` it is refused with
  ServerBusyError: the request is fine, the server is busy, retry later.

The budget is `max_memory` (weights of every loaded export counted once, then the activations of the calls
in flight), or else the memory available now (host_memory.available_memory) minus what the calls in flight
have reserved. The second is conservative: a call in flight that has already allocated part of its estimate
is counted twice, so a waiting call may wait a little longer than needed, never run out of memory.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import DitfError
from ..host_memory import available_memory
from ..manifest import Manifest
from ..memory import MemoryEstimate, Run, RunShape, check_runs, estimate, estimate_runs, gib

DEFAULT_WAIT_S = 60.0


class ServerBusyError(DitfError):
    """A request that fits the server's memory budget could not start within the wait: retry later."""


class Admission:
    """The server's memory account: `with admission.hold(runs): run them`."""

    def __init__(
        self,
        manifests: Sequence[Manifest],
        *,
        max_memory: int | None = None,
        device: str = "cpu",
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        self.max_memory = max_memory
        self.device = device
        self.wait_s = float(wait_s)
        # What the loaded exports' weights hold, once for the server (memory.estimate counts them per call).
        self.weights = sum(_weights(m) for m in manifests)
        self._reserved: dict[int, int] = {}  # ticket -> bytes, calls in flight
        self._queue: list[int] = []  # tickets waiting, oldest first
        self._tickets = itertools.count()
        self._changed = threading.Condition()

    @property
    def reserved(self) -> int:
        with self._changed:
            return sum(self._reserved.values())

    def _room(self, reserved: int) -> int | None:
        """Bytes of activations a new call may use now (None: the budget cannot be measured)."""
        if self.max_memory is not None:
            return self.max_memory - self.weights - reserved
        free = available_memory(self.device)
        return None if free is None else free - reserved

    def check(self, runs: Sequence[Run]) -> MemoryEstimate:
        """Refuse (MemoryBudgetError, naming a --size that fits) calls that would not fit even on an idle server."""
        if self.max_memory is not None:
            # memory.check_runs counts the calls' own weights; the server's budget holds every export's once
            return check_runs(runs, max_memory=self.max_memory - self.weights + _weights_of(runs), device=self.device)
        need = estimate_runs(runs)
        free = available_memory(self.device)
        if free is not None and need.activations > free + self.reserved:  # would not fit with nothing in flight
            check_runs(runs, device=self.device)  # raises, with the measured budget and a --size that fits
        return need

    @contextmanager
    def hold(self, runs: Sequence[Run]) -> Iterator[MemoryEstimate]:
        """Reserve the calls' activations for the block (waiting for room, in arrival order); release after."""
        need_estimate = self.check(runs)
        need = need_estimate.activations
        ticket = next(self._tickets)
        deadline = time.monotonic() + self.wait_s
        with self._changed:
            self._queue.append(ticket)
            try:
                while True:
                    reserved = sum(self._reserved.values())
                    room = self._room(reserved)
                    first = self._queue[0] == ticket
                    if first and (room is None or need <= room or not self._reserved):
                        break  # fits beside the calls in flight (or nothing runs: check() said it fits alone)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServerBusyError(
                            f"the server is busy: this request needs about {gib(need)} of memory and the "
                            f"{len(self._reserved)} call(s) running hold {gib(reserved)} of its budget "
                            f"({self._budget_text()}); it waited {self.wait_s:.0f} s. Retry later, or send a "
                            "smaller size or ensemble"
                        )
                    # Re-measure now and then: memory freed by other processes counts too.
                    self._changed.wait(min(left, 0.5))
                self._reserved[ticket] = need
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()
        try:
            yield need_estimate
        finally:
            with self._changed:
                self._reserved.pop(ticket, None)
                self._changed.notify_all()

    def _budget_text(self) -> str:
        if self.max_memory is not None:
            return f"--max-memory {gib(self.max_memory)}, of which weights {gib(self.weights)}"
        return "the memory available on this machine"


def _weights(manifest: Manifest) -> int:
    """Resident bytes of an export's loaded weights, as memory.estimate counts them (any call's shape will do)."""
    side = max(1, manifest.geometry.size_multiple)
    return estimate(manifest, RunShape(1, 1, side, side)).weights


def _weights_of(runs: Sequence[Run]) -> int:
    return sum(estimate(manifest, shape).weights for manifest, shape in runs)
