"""The MCS bridge's telecommand input: TC space packets read from TCP clients and UDP datagrams.

Both readers use ``recvmsg``, not the loop's ``sock_recv``: the kernel's receive time
(``SO_TIMESTAMPNS``) comes as ancillary data, so a telecommand enters the scenario when it
arrived, however late the loop reads it. They hand each whole packet to ``on_packet(packet, via,
at_wall)`` and say what they refuse (a datagram that is not one packet, a stream cut mid-packet)
to the bridge, which counts it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from nodes.mcs_packets import StreamSplitter, datagram_packet
from nodes.mcs_tm_stream import kernel_wall

log = logging.getLogger("orbitmesh.mcs")
READ_BYTES = 65_536
OnPacket = Callable[[bytes, str, float | None], None]
"""Takes a TC packet, how it came (``tcp``, ``udp``) and its kernel receive time (None: now)."""


async def tc_stream_client(sock: socket.socket, peer: Any, *, on_packet: OnPacket,
                           on_truncated: Callable[[], None]) -> None:
    """Read one ``tc_tcp`` client's packets (back to back) until it hangs up."""
    # recvmsg for the kernel's receive time of the segment read last (SO_TIMESTAMPNS works
    # on TCP too): a command enters the scenario when it arrived, not when the loop read it.
    loop = asyncio.get_running_loop()
    splitter = StreamSplitter()
    readable = asyncio.Event()
    loop.add_reader(sock.fileno(), readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                data, ancillary, _flags, _peer = sock.recvmsg(READ_BYTES, 64)
            except BlockingIOError:
                continue
            if not data:
                break
            at_wall = kernel_wall(ancillary)
            for packet in splitter.feed(data):
                on_packet(packet, "tcp", at_wall)
    except OSError as exc:
        log.info("mcs tc_tcp client %s gone: %s", peer, exc)
    finally:
        loop.remove_reader(sock.fileno())
        if splitter.pending_bytes:
            on_truncated()
        sock.close()


async def tc_datagrams(sock: socket.socket, *, on_packet: OnPacket,
                       on_bad: Callable[[str], None]) -> None:
    """Read the ``tc_udp`` socket's datagrams (one packet each) until cancelled."""
    # recvmsg, not sock_recvfrom: the kernel's receive time comes as ancillary data, so a
    # telecommand enters the scenario when it arrived, however late the loop reads it.
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(sock.fileno(), readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            while _tc_datagram(sock, on_packet, on_bad):
                pass
    finally:
        loop.remove_reader(sock.fileno())


def _tc_datagram(sock: socket.socket, on_packet: OnPacket,
                 on_bad: Callable[[str], None]) -> bool:
    """Handle one queued TC datagram; False when none is left."""
    try:
        datagram, ancillary, _flags, _peer = sock.recvmsg(READ_BYTES + 16, 64)
    except BlockingIOError:
        return False
    except OSError as exc:  # an ICMP error queued on the socket: keep reading
        log.info("mcs tc_udp: %s", exc)
        return True
    packet, why = datagram_packet(datagram)
    if packet is None:
        on_bad(why or "bad")
        return True
    on_packet(packet, "udp", kernel_wall(ancillary))
    return True
