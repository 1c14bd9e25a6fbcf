"""The live progress line of a local run on stderr, and the warning when a worker falls behind.

It reads the workers' last statuses (as the launcher's listener keeps them) and nothing else, so
printing it never touches the run.
"""

from __future__ import annotations

import sys
import time

from orbitmesh.core.scenario import Fidelity
from orbitmesh.protocol.messages import WorkerProgress, WorkerStatus
from orbitmesh.run.fidelity import behind_warning


class ProgressLine:
    """The live progress line (scenario time, frames/s, deliveries, drops)."""

    def __init__(self, status: dict[int, WorkerStatus], workers: int, duration: float,
                 enabled: bool, budget: Fidelity | None = None) -> None:
        self.budget = budget or Fidelity()
        self._warned = -1e9
        self.status = status
        self.workers = workers
        self.duration = duration
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = (time.monotonic(), 0)
        self._printed = 0.0

    def update(self, t_s: float) -> None:
        """Print the progress line (at most twice a second; every 10 s when not a terminal),
        and — quiet or not — a warning as soon as a worker falls behind the fidelity budget."""
        now = time.monotonic()
        self._warn_if_behind(now)
        if not self.enabled or now - self._printed < (0.5 if self.tty else 10.0):
            return
        self._printed = now
        s = [x.progress or WorkerProgress() for x in self.status.values()]
        hops = sum(x.hops for x in s)
        rate = (hops - self._last[1]) / max(1e-6, now - self._last[0])
        self._last = (now, hops)
        line = (f"t={t_s:7.1f}/{self.duration:g} s  {rate:8.0f} frame-hops/s  "
                f"offered {sum(x.offered for x in s)}  "
                f"delivered {sum(x.delivered for x in s)}  "
                f"dropped {sum(x.dropped for x in s)}  "
                f"on board {sum(x.held_on_board for x in s)}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def _warn_if_behind(self, now: float) -> None:
        if now - self._warned < 5.0:
            return
        progress = [x.progress for x in self.status.values() if x.progress is not None]
        late = max((x.late_ms for x in progress), default=0.0)
        apply = max((x.apply_late_ms for x in progress), default=0.0)
        warning = behind_warning(late, self.budget)
        if warning is None and apply > self.budget.link_apply_budget_ms:
            warning = behind_warning(apply, self.budget.model_copy(
                update={"budget_ms": self.budget.link_apply_budget_ms}))
        if warning is None:
            return
        self._warned = now
        print(("\r" if self.tty else "") + "WARNING: " + warning, file=sys.stderr, flush=True)

    def done(self) -> None:
        """End the progress line."""
        if self.enabled and self.tty:
            print(file=sys.stderr)
