"""UDP pipes (no root): the loopback sockets of the pipe ends one worker hosts.

A datagram sent to a pipe's ``listen`` address enters the network at the pipe's node addressed
to its far node, which sends it to ``deliver`` from a socket of its own; what comes back to that
socket returns along the pipe to the last sender. The frames are the endpoint host's
(nodes/endpoints.py): same counts, same refusals before the start and after traffic stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any

from orbitmesh.errors import RunError
from orbitmesh.protocol.wire import FLOW_ENDPOINT

if TYPE_CHECKING:
    from nodes.endpoints import EndpointHost, NodeCounts

READ_BURST = 256
"""Packets read per wake-up of one TUN or socket: bounds how long one endpoint holds the loop."""
MAX_PACKET = 65_535
UDP_TAG = "udp"

Pipe = tuple[int, int, int, dict[str, Any]]
"""(pipe number, entry node, far node, the pipe's plan entry)."""


class UdpPipes:
    """The sockets of the pipe ends on this worker's nodes, read into the host's frames."""

    def __init__(self, host: EndpointHost, pipes: list[Pipe]) -> None:
        self.host = host
        self.pipes = pipes
        self.listen: dict[int, socket.socket] = {}
        self.reply: dict[int, socket.socket] = {}
        self.last_client: dict[int, Any] = {}

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the pipe ends of local nodes and start reading them."""
        local = self.host.rt.local
        for i, src, dst, p in self.pipes:
            if src in local:
                sock = _udp_socket(p["listen"])
                self.listen[i] = sock
                loop.add_reader(sock.fileno(), self._read_pipe, i, src, dst, sock, 0)
            if dst in local:
                sock = _udp_socket(p["deliver"], ephemeral=True)
                self.reply[i] = sock
                loop.add_reader(sock.fileno(), self._read_pipe, i, dst, src, sock, 1)

    def close(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Stop reading and close every socket."""
        for sock in [*self.listen.values(), *self.reply.values()]:
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
            sock.close()

    def _read_pipe(self, pipe: int, u: int, v: int, sock: socket.socket, direction: int) -> None:
        for _ in range(READ_BURST):
            try:
                data, peer = sock.recvfrom(MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable from a previous sendto
                self.host.counts_of(u).refused[f"socket_error:{exc.errno}"] += 1
                continue
            if direction == 0:
                self.last_client[pipe] = peer
            self.datagram_in(pipe, u, v, data, direction, self.host.now())
        self.host.after_input()

    def datagram_in(self, pipe: int, u: int, v: int, data: bytes, direction: int,
                    at_wall: float) -> None:
        """A datagram enters pipe ``pipe`` at node ``u`` for node ``v``."""
        host = self.host
        counts = host.counts_of(u)
        if not data:
            counts.refused["empty_datagram"] += 1
            return
        if not host.accepting(u, counts, at_wall) or host.rt.suppressed(FLOW_ENDPOINT, u):
            return
        counts.offered += 1
        host.rt.originate(u, host.frame(u, v, data, [UDP_TAG, pipe, direction], at_wall), at_wall)

    def deliver(self, ref: Any, data: bytes, counts: NodeCounts) -> None:
        """Send a delivered datagram out of its pipe's end at this node (``ref`` names it)."""
        if not (isinstance(ref, list) and len(ref) == 3 and ref[0] == UDP_TAG
                and isinstance(ref[1], int) and 0 <= ref[1] < len(self.pipes)):
            counts.refused["unknown_pipe"] += 1
            return
        pipe, direction = ref[1], ref[2]
        peer: Any
        if direction == 0:
            sock, peer = self.reply.get(pipe), _address(self.host.plan["udp"][pipe]["deliver"])
        else:
            sock, peer = self.listen.get(pipe), self.last_client.get(pipe)
        if sock is None or peer is None:
            counts.refused["pipe_not_here"] += 1
            return
        try:
            sock.sendto(data, peer)
        except OSError as exc:
            counts.refused[f"send_failed:{exc.errno}"] += 1
            return
        counts.delivered += 1


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _udp_socket(text: str, *, ephemeral: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to ``text`` (or, ``ephemeral``, to any port of its host)."""
    host, port = _address(text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        sock.bind((host, 0 if ephemeral else port))
    except OSError as exc:
        sock.close()
        raise RunError(f"UDP pipe cannot listen on {text}: {exc.strerror}") from exc
    return sock
