"""The MCS bridge's sockets: opening them, the kernel's receive times, the TM TCP stream.

The TM stream serves any number of MCS clients (Yamcs' ``TcpTmDataLink``, COSMOS' TCP client
interface): each gets every TM packet back to back, written from a task of its own as the
worker's loop delivers. A client that falls ``tcp_buffer_bytes`` behind is disconnected
(counted), so one stuck MCS never holds the worker's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from orbitmesh.core.mcs_spec import split_address
from orbitmesh.errors import RunError

log = logging.getLogger("orbitmesh.mcs")
READ_BYTES = 65_536
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's option number, for Pythons that do not name it."""
_TIMESPEC = struct.Struct("@qq")


def open_socket(kind: int, address: str, what: str) -> socket.socket:
    """The socket for ``mcs.<what>`` at ``address`` (bound and listening, or connected)."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setblocking(False)
    try:
        if what == "tm_udp":
            sock.connect((host, port))
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if what.startswith("tc_"):  # from the first datagram or segment on; accepted
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # sockets inherit it
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(8)
    except OSError as exc:
        sock.close()
        raise RunError(f"mcs.{what}: cannot use {address}: {exc.strerror or exc}; choose a "
                       "free port in the scenario's ops_centres[].mcs") from exc
    return sock


def kernel_wall(ancillary: Sequence[tuple[int, int, bytes]]) -> float | None:
    """The ``SO_TIMESTAMPNS`` receive time (wall seconds) in a datagram's ancillary data."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds + nanoseconds * 1e-9
    return None


class _Client:
    """One TCP connection of the MCS reading TM."""

    def __init__(self, sock: socket.socket, peer: Any) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        self.ready = asyncio.Event()
        self.closed = False


class TmStream:
    """The TM TCP stream of one bridge: its clients, what they were sent, who was dropped."""

    def __init__(self, name: str, limit_bytes: int, on_change: Callable[[], None]) -> None:
        self.name = name
        self.limit_bytes = limit_bytes
        self.on_change = on_change
        self.clients: list[_Client] = []
        self.sent = 0
        self.dropped = 0

    def push(self, packet: bytes) -> None:
        """Append ``packet`` to every connected client's stream."""
        limit = self.limit_bytes
        for client in self.clients:
            if client.closed:
                continue
            if client.buffer and len(client.buffer) + len(packet) > limit:  # one always fits
                self._drop(client, "fell behind")
                continue
            client.buffer += packet
            client.ready.set()
            self.sent += 1

    def _drop(self, client: _Client, why: str) -> None:
        if not client.closed:
            log.warning("mcs tm_tcp client %s disconnected: %s", client.peer, why)
            self.dropped += 1
            client.closed = True
            client.ready.set()
            with contextlib.suppress(OSError):  # wakes its reader: the connection ends now
                client.sock.shutdown(socket.SHUT_RDWR)

    async def client(self, sock: socket.socket, peer: Any) -> None:
        """Serve one MCS connection reading TM until it hangs up or falls behind."""
        loop = asyncio.get_running_loop()
        client = _Client(sock, peer)
        self.clients.append(client)
        self.on_change()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._writer(client), name=f"{self.name}.tm.{peer[1]}.write")
                while not client.closed:  # a reader only to see the MCS hang up
                    if not await loop.sock_recv(sock, READ_BYTES):
                        client.closed = True
                        client.ready.set()
        except* OSError as group:
            log.info("mcs tm_tcp client %s gone: %s", peer, group.exceptions[0])
        finally:
            client.closed = True
            self.clients.remove(client)
            sock.close()

    async def _writer(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        while not client.closed:
            await client.ready.wait()
            client.ready.clear()
            while client.buffer and not client.closed:
                chunk = bytes(client.buffer)
                client.buffer.clear()
                await loop.sock_sendall(client.sock, chunk)

    @property
    def live(self) -> int:
        """Clients reading now."""
        return sum(not c.closed for c in self.clients)

    def close(self) -> None:
        """Close every client's socket."""
        for client in self.clients:
            client.sock.close()
