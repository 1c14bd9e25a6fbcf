"""The MCS bridge's TM pacer: a small process that sends each TM datagram at its emulated arrival.

The worker's event loop handles a delivery when it gets round to it — on this project's VMs
2-5 ms late at p99 (bench/timers.py). The pacer does not wait on that loop: the worker hands it
each TM packet as soon as the packet's last hop is scheduled (its due arrival is then known),
and the pacer, a process of its own (its own GIL; ``SCHED_FIFO`` when the kernel allows it),
sleeps until that wall instant and sends the datagram to ``tm_udp``.

It must never send a packet that the trace says was not delivered. Only a link state taking
effect before the packet's arrival can still drop it, so the worker tells the pacer about link
states (``barrier``: a state takes effect at that wall time; ``applied``: the runtime applied
it), and the pacer commits a packet at its due time only if

* no announced state that is not yet applied takes effect at or before the packet's arrival,
* a state taking effect *after* the arrival has been announced (the controller publishes one
  tick ahead and in order, so every state before the arrival is then known), and
* the worker is not in the middle of reading a batch that holds a state or a launcher command
  (``gate``: announced before the worker stamps the batch's receive time, so a state the
  worker received before the due time is always seen here in time).

Otherwise the packet is *held*: the worker's own verdict (``verdict``: delivered or dropped, when
its loop handles the arrival) decides, and held packets keep their place in the order. Packets
leave in due order, a held one blocking those after it. A verdict "dropped" for a packet already
sent is counted (``sent_then_dropped``); the design keeps it 0, and the count says if not.

Protocol: one AF_UNIX SOCK_SEQPACKET pair; each message is ``HEAD`` (op, id, wall) plus the
packet for ``S``/``P``; the pacer answers with JSON counters (after changes, at most every
``REPORT_S``, and a final one after ``X``). End of file on its socket (the worker died) ends it.
"""

from __future__ import annotations

import gc
import heapq
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

from orbitmesh.core.histogram import Histogram

HEAD = struct.Struct("<cQd")
"""op, id, wall (then the packet, for S and P)."""

SCHEDULE, NOW, VERDICT_OK, VERDICT_DROP = b"S", b"P", b"N", b"D"
BARRIER, APPLIED, GATE_CLOSE, GATE_OPEN, FREEZE, EXIT = b"B", b"A", b"G", b"O", b"F", b"X"
REPORT_S = 0.5
IDLE_S = 0.005
"""Periodic reports go out only when no packet is due within this (wall s)."""
RT_CPU_LIMIT_US = 200_000
"""A real-time pacer stuck in a loop gets SIGXCPU after 0.2 s of CPU without sleeping."""
MAX_MESSAGE = 65_600


class _Entry:
    __slots__ = ("due", "held", "packet", "released", "sent")

    def __init__(self, due: float, packet: bytes, *, held: bool, released: bool) -> None:
        self.due = due
        self.packet = packet
        self.held = held
        self.released = released
        self.sent = False


class Schedule:
    """The pacer's decisions, sans I/O: what to send when (the tests drive it with fake times)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []
        self._entries: dict[int, _Entry] = {}
        self._seq = 0
        self._now_ids = 1 << 63
        self.unapplied: set[float] = set()
        self.horizon = float("-inf")
        self.gate_closed = False
        self.frozen = False
        self.counts: Counter[str] = Counter()
        self.late_ms = Histogram()
        """Committed packets: send wall minus due arrival, ms."""
        self.held_late_ms = Histogram()
        """Held packets: send wall minus due arrival, ms (the worker's verdict came then)."""
        self.awaiting_verdict: set[int] = set()
        self.gate_ms = Histogram()
        """How long the worker kept the gate closed (pacer's wall, ms)."""
        self._gate_closed_wall = 0.0
        self._gate_opened_wall = float("-inf")
        self._held_released_wall = float("-inf")

    def gate(self, closed: bool, now_wall: float) -> None:
        """The worker started (True) or finished reading a batch with a state or a command."""
        if closed and not self.gate_closed:
            self._gate_closed_wall = now_wall
        elif not closed and self.gate_closed:
            self._gate_opened_wall = now_wall
            self.gate_ms.add((now_wall - self._gate_closed_wall) * 1000.0)
        self.gate_closed = closed

    def schedule(self, ident: int, due: float, packet: bytes) -> None:
        """A packet whose arrival at the centre is due at ``due`` (wall)."""
        held = any(x <= due for x in self.unapplied)
        self._push(ident, _Entry(due, packet, held=held, released=False))
        self.counts["scheduled"] += 1

    def now(self, at_wall: float, packet: bytes) -> None:
        """A packet the worker delivered without announcing it: send it as soon as its turn."""
        self._now_ids += 1
        self._push(self._now_ids, _Entry(at_wall, packet, held=True, released=True))
        self.counts["unannounced"] += 1

    def _push(self, ident: int, entry: _Entry) -> None:
        self._seq += 1
        self._entries[ident] = entry
        heapq.heappush(self._heap, (entry.due, self._seq, ident))

    def barrier(self, at_wall: float) -> None:
        """A link state takes effect at ``at_wall``: packets due from then on wait for a verdict."""
        self.unapplied.add(at_wall)
        self.horizon = max(self.horizon, at_wall)
        for entry in self._entries.values():
            if not entry.sent and entry.due >= at_wall and not entry.held:
                entry.held = True

    def applied(self, at_wall: float) -> None:
        """The worker applied the state announced for ``at_wall``."""
        self.unapplied.discard(at_wall)

    def verdict(self, ident: int, delivered: bool) -> None:
        """The worker handled the packet's arrival: delivered, or dropped."""
        if ident in self.awaiting_verdict:
            self.awaiting_verdict.discard(ident)
            self.counts["confirmed" if delivered else "sent_then_dropped"] += 1
            return
        entry = self._entries.get(ident)
        if entry is None:
            self.counts["verdict_unknown"] += 1
            return
        if delivered:  # held, or the loop got there first: sent at once, as confirmed
            entry.released = True
            self.counts["confirmed"] += 1
        else:
            del self._entries[ident]  # its heap item is skipped when it comes up
            self.counts["held_dropped"] += 1

    def freeze(self) -> None:
        """The worker stopped handling arrivals: send nothing more."""
        self.frozen = True
        self.counts["cancelled_at_end"] += sum(not e.sent for e in self._entries.values())
        self._entries.clear()
        self._heap.clear()

    def next_due(self) -> float | None:
        """Wall time the head packet is due, or None when nothing can go before a message."""
        while self._heap and self._heap[0][2] not in self._entries:
            heapq.heappop(self._heap)
        if not self._heap or self.gate_closed:
            return None
        entry = self._entries[self._heap[0][2]]
        if entry.held and not entry.released:
            return None
        return entry.due

    def take(self, now_wall: float) -> list[tuple[bytes, float, bool]]:
        """Packets to send at ``now_wall``: ``(packet, due, committed)``, in due order."""
        out: list[tuple[bytes, float, bool]] = []
        while not self.gate_closed:
            due = self.next_due()
            if due is None or due > now_wall:
                break
            _due, _seq, ident = heapq.heappop(self._heap)
            entry = self._entries.pop(ident)
            if not entry.held and due >= self.horizon:
                entry.held = True  # the state in force at its arrival is not known yet
                self._entries[ident] = entry
                heapq.heappush(self._heap, (_due, _seq, ident))
                continue
            entry.sent = True
            committed = not entry.held
            if not committed:
                self._held_released_wall = now_wall
            if committed and not entry.released:
                self.awaiting_verdict.add(ident)
            out.append((entry.packet, entry.due, committed))
        return out

    def sent(self, due: float, sent_wall: float, committed: bool) -> None:
        """Record one send's lateness (and, past 1 ms, whether a gate was in the way)."""
        late_ms = max(0.0, sent_wall - due) * 1000.0
        (self.late_ms if committed else self.held_late_ms).add(late_ms)
        self.counts["committed" if committed else "held_sent"] += 1
        if late_ms > 1.0:  # why: a gate was closed at its due time, a packet before it was
            # held, or the pacer itself woke late (or heard of it late: announced_after_due)
            why = ("gate" if self._gate_opened_wall >= due else
                   "behind_held" if self._held_released_wall >= due else "other")
            self.counts[f"late_1ms_{why}"] += 1

    def report(self, *, final: bool = True) -> dict[str, Any]:
        """Counters for the worker's stats file (histograms whole when ``final``, else their
        summaries: encoding thousands of samples would hold a send back by milliseconds)."""
        hists = {"late_ms": self.late_ms, "held_late_ms": self.held_late_ms,
                 "gate_ms": self.gate_ms}
        return {**self.counts, "unconfirmed": len(self.awaiting_verdict),
                **{k: h.to_dict() if final else h.summary() for k, h in hists.items()}}


# --- the process ---------------------------------------------------------------------------------

def _realtime() -> str:
    """SCHED_FIFO at the lowest real-time priority when allowed (root, CAP_SYS_NICE)."""
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, (RT_CPU_LIMIT_US, RT_CPU_LIMIT_US))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError, ValueError):
        return "normal"
    return "fifo"


def _udp(address: str) -> socket.socket:
    host, _sep, port = address.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


def serve(ctl: socket.socket, udp: socket.socket, sched: str) -> None:
    """The pacer's loop: read the worker's messages, send each packet at its due time."""
    plan = Schedule()
    plan.counts[f"sched_{sched}"] = 1
    gc.disable()  # no cycles here; a collection pass would only delay sends
    last_report, dirty = 0.0, True
    while True:
        due = plan.next_due()
        timeout = None if due is None else max(0.0, due - time.time())
        if dirty and (timeout is None or timeout > REPORT_S):
            timeout = REPORT_S if timeout is None else min(timeout, REPORT_S)
        readable, _w, _x = select.select([ctl], [], [], timeout)
        while readable:  # every message already queued, before any decision
            try:
                message = ctl.recv(MAX_MESSAGE)
            except BlockingIOError:
                break
            if not message:
                return  # the worker is gone
            op, ident, at = HEAD.unpack_from(message)
            if op == EXIT:
                plan.freeze()
                ctl.setblocking(True)
                ctl.send(json.dumps(plan.report()).encode())
                return
            _apply(plan, op, ident, at, message[HEAD.size:])
            dirty = True
        now = time.time()
        for packet, due_wall, committed in plan.take(now):
            try:
                udp.send(packet)
            except BlockingIOError:
                plan.counts["udp_busy"] += 1
            except OSError as exc:  # ECONNREFUSED: nobody listening (ICMP port unreachable)
                plan.counts[f"udp_{exc.errno}"] += 1
            else:
                plan.sent(due_wall, time.time(), committed)
            dirty = True
        due = plan.next_due()
        now = time.time()
        if dirty and now - last_report >= REPORT_S and (due is None or due - now > IDLE_S):
            try:
                ctl.send(json.dumps(plan.report(final=False)).encode())
                last_report, dirty = time.time(), False
            except BlockingIOError:
                pass


def _apply(plan: Schedule, op: bytes, ident: int, at: float, packet: bytes) -> None:
    if op == SCHEDULE:
        plan.schedule(ident, at, packet)
        if at < time.time():  # the worker told us too late to send it on time
            plan.counts["announced_after_due"] += 1
    elif op == NOW:
        plan.now(at, packet)
    elif op in (VERDICT_OK, VERDICT_DROP):
        plan.verdict(ident, op == VERDICT_OK)
    elif op == BARRIER:
        plan.barrier(at)
    elif op == APPLIED:
        plan.applied(at)
    elif op in (GATE_CLOSE, GATE_OPEN):
        plan.gate(op == GATE_CLOSE, time.time())
    elif op == FREEZE:
        plan.freeze()


def main(argv: list[str]) -> int:
    """``python -m nodes.mcs_pacer FD HOST:PORT [LABEL]``: FD is the pacer's end of the
    socketpair; LABEL (``<run id>/<ops centre>``) only names the process for ``ps``."""
    ctl = socket.socket(fileno=int(argv[0]))
    ctl.setblocking(False)
    sched = _realtime()
    with ctl, _udp(argv[1]) as udp:
        serve(ctl, udp, sched)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
