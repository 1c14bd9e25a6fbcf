"""What a command on a run's ``control`` topic may do, before the controller applies it.

Fault and clear commands are rate-limited (:data:`CONTROL_RATE_PER_S` sustained, bursts of
:data:`CONTROL_BURST`): a flood is refused, so it cannot stretch the run. A live fault whose
target matches nothing is refused (a typo would otherwise do nothing), and a clear names an
active fault. The retained faults topic lists each fault as a :class:`FaultInfo`.
"""

from __future__ import annotations

from orbitmesh.core.faults import PROCESS_KINDS, CommandError, Fault, FaultOverlay
from orbitmesh.protocol.messages import FaultInfo

CONTROL_RATE_PER_S = 20.0
CONTROL_BURST = 100
"""Fault/clear commands the controller takes: a sustained rate, and how many at once."""


def check_target(fault: Fault, overlay: FaultOverlay, workers: int | None) -> None:
    """Reject a fault whose target matches nothing (a typo would otherwise do nothing)."""
    spec = fault.spec
    if spec.kind in PROCESS_KINDS:
        worker = spec.worker
        if worker is not None and workers is not None and worker >= workers:
            raise CommandError(f"{spec.kind}: worker {worker} does not exist; this run has "
                               f"workers 0..{workers - 1}")
        return
    nodes = overlay.nodes_of(fault)
    if nodes is not None and not nodes.any():
        target = ", ".join(f"{k}={v}" for k, v in fault.describe()["target"].items())
        raise CommandError(f"{spec.kind}: {target} matches no node")
    if spec.kind in ("link_down", "link_degrade") and (
            not overlay.match(spec.a or "*").any() or not overlay.match(spec.b or "*").any()):
        raise CommandError(f"{spec.kind}: a/b patterns match no node")


def end_fault(faults: list[Fault], fault_id: str, now_s: float) -> None:
    """End the active fault ``fault_id`` at ``now_s`` (in ``faults``, in place)."""
    for i, fault in enumerate(faults):
        if fault.id == fault_id and fault.active(now_s):
            faults[i] = Fault(fault.id, fault.spec, fault.start_s, now_s, fault.origin)
            return
    raise CommandError(f"no active fault with id {fault_id!r}; active: "
                       f"{[f.id for f in faults if f.active(now_s)]}")


def fault_info(fault: Fault, active: bool) -> FaultInfo:
    """A fault as the faults topic lists it."""
    d = fault.describe()
    return FaultInfo(fault.id, fault.spec.kind, fault.origin, d["start_s"], d["end_s"], active,
                     tuple(sorted(d["target"].items())))


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.last_wall: float | None = None

    def take(self, now_wall: float) -> bool:
        """One token if there is one."""
        if self.last_wall is not None:
            self.tokens = min(self.burst, self.tokens + (now_wall - self.last_wall)
                              * self.rate_per_s)
        self.last_wall = now_wall
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
