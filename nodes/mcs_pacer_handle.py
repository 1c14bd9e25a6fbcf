"""The worker's handle on its MCS pacer process (nodes/mcs_pacer.py): start it, tell it, stop it.

Every call is a non-blocking send on the worker's end of the socketpair, made from the event
loop. A packet the pacer's socket has no room for is counted and left to the loop's delivery;
a verdict, state or gate message waits up to ``CONTROL_SEND_TIMEOUT_S`` for room, since losing
one would stall the pacer or let it send what the trace drops.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from nodes.mcs_pacer import (
    APPLIED,
    BARRIER,
    EXIT,
    FREEZE,
    GATE_CLOSE,
    GATE_OPEN,
    HEAD,
    MAX_MESSAGE,
    NOW,
    SCHEDULE,
    VERDICT_DROP,
    VERDICT_OK,
)

CONTROL_SEND_TIMEOUT_S = 1.0


class Pacer:
    """The worker's handle on its pacer process (one per bridged ops centre with ``tm_udp``)."""

    def __init__(self, tm_udp: str, label: str = "") -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
        self.sock = ours
        self.counts: dict[str, Any] = {}
        """The pacer's latest report."""
        self.failed: Counter[str] = Counter()
        """Messages the worker could not hand to the pacer (its socket full), by kind."""
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nodes.mcs_pacer", str(theirs.fileno()), tm_udp,
                 *([label] if label else [])],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        ours.setblocking(False)

    def _send(self, op: bytes, ident: int = 0, at: float = 0.0, packet: bytes = b"") -> bool:
        message = HEAD.pack(op, ident, at) + packet
        try:
            try:
                self.sock.send(message)
            except BlockingIOError:
                if op in (SCHEDULE, NOW):  # a packet: the loop's delivery still decides
                    raise
                # A lost verdict, state or gate would stall the pacer or let it send what the
                # trace drops: wait (briefly) for room instead.
                self.sock.settimeout(CONTROL_SEND_TIMEOUT_S)
                try:
                    self.sock.send(message)
                finally:
                    self.sock.setblocking(False)
        except (BlockingIOError, TimeoutError, BrokenPipeError, ConnectionResetError) as exc:
            self.failed[f"{op.decode()}_{type(exc).__name__}"] += 1
            return False
        return True

    def schedule(self, ident: int, due: float, packet: bytes) -> bool:
        """Send ``packet`` at wall time ``due`` unless held."""
        return self._send(SCHEDULE, ident, due, packet)

    def now(self, at_wall: float, packet: bytes) -> bool:
        """Send ``packet`` now (in its turn): it was delivered without being announced."""
        return self._send(NOW, 0, at_wall, packet)

    def verdict(self, ident: int, delivered: bool) -> None:
        """The loop handled the arrival of packet ``ident``."""
        self._send(VERDICT_OK if delivered else VERDICT_DROP, ident)

    def barrier(self, at_wall: float) -> None:
        """A link state was scheduled to take effect at ``at_wall``."""
        self._send(BARRIER, 0, at_wall)

    def applied(self, at_wall: float) -> None:
        """The state scheduled for ``at_wall`` is applied."""
        self._send(APPLIED, 0, at_wall)

    def gate(self, closed: bool) -> None:
        """Close before stamping a batch that holds a state or a command; open after it."""
        self._send(GATE_CLOSE if closed else GATE_OPEN)

    def freeze(self) -> None:
        """The worker handles no more arrivals: send nothing more."""
        self._send(FREEZE)

    def read_report(self, data: bytes) -> None:
        """Keep a report the pacer sent."""
        try:
            self.counts = json.loads(data)
        except ValueError:
            self.failed["bad_report"] += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the pacer, keeping its final report; kill it (by its PID) if it does not stop."""
        if self.sock.fileno() < 0:
            return
        if self._send(EXIT):
            deadline = time.monotonic() + timeout_s
            self.sock.setblocking(True)
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    data = self.sock.recv(MAX_MESSAGE)
                except (TimeoutError, OSError):
                    break
                if not data:
                    break
                self.read_report(data)
        self.sock.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
