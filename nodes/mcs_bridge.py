"""The socket side of the MCS bridge: an ops centre's TM out to, and TC in from, a real MCS.

For each hosted ops centre with an ``mcs`` setting (orbitmesh/core/mcs_spec.py), the worker opens
a :class:`McsBridge`:

* TM: every space packet that reaches the centre (housekeeping telemetry and the satellites' TM
  acknowledgements, in the order the emulation delivers them) goes out at once, as it is handed
  over — one datagram each to ``tm_udp``, and back to back to every client connected to
  ``tm_tcp``. A TCP client that falls ``tcp_buffer_bytes`` behind is disconnected (counted), so
  one stuck MCS never holds the worker's memory.
* TC: space packets arriving on ``tc_udp`` (one per datagram) or ``tc_tcp`` (back to back) are
  routed by APID (nodes/mcs_packets.py) and originated at the centre as TELECOMMAND frames with
  the packet as payload; the satellite's acknowledgement comes back as TM.

Nothing is lost silently: every packet refused, every failed send, every dropped client is
counted in the worker's stats file under ``mcs`` (docs/mcs.md). The tasks (accept loops, one
reader and one writer per TCP client, the UDP TC reader) live in one TaskGroup that
:meth:`McsBridges.serve` owns; the worker runs it in its own TaskGroup and cancels it on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from nodes.mcs_packets import StreamSplitter, TcRouter, datagram_packet
from nodes.roles import Roles
from orbitmesh.core.histogram import Histogram
from orbitmesh.core.mcs_spec import McsSpec, check_routes, split_address, tc_routes
from orbitmesh.errors import RunError

log = logging.getLogger("orbitmesh.mcs")
READ_BYTES = 65_536
TC_LOG_LIMIT = 100_000
"""Telecommands kept in the stats file for pairing (frame id, APID, count, wall)."""


def _socket(kind: int, address: str, what: str) -> socket.socket:
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setblocking(False)
    try:
        if what == "tm_udp":
            sock.connect((host, port))
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(8)
    except OSError as exc:
        sock.close()
        raise RunError(f"mcs.{what}: cannot use {address}: {exc.strerror or exc}; choose a "
                       "free port in the scenario's ops_centres[].mcs") from exc
    return sock


class _Client:
    """One TCP connection of the MCS reading TM."""

    def __init__(self, sock: socket.socket, peer: Any) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        self.ready = asyncio.Event()
        self.closed = False


class McsBridge:
    """The bridge of one ops centre (node ``node``)."""

    def __init__(self, roles: Roles, node: int, spec: McsSpec, *, now: Callable[[], float],
                 started: Callable[[], bool], after_input: Callable[[], None]) -> None:
        self.roles = roles
        self.rt = roles.rt
        self.node = node
        self.spec = spec
        self.now = now
        self.started = started
        self.after_input = after_input
        topo = self.rt.topology
        centre = topo.scenario.ops_centres[node - topo.n_satellites - topo.n_stations]
        names = [topo.node_ids[s] for s in range(topo.n_satellites)
                 if topo.shells[int(topo.sat_constellation[s])].constellation.name
                 in centre.constellations]
        routes = tc_routes(spec, names)
        try:
            check_routes(routes, set(names))
        except ValueError as exc:
            raise RunError(f"ops centre {centre.name}: {exc}") from exc
        self.router = TcRouter({apid: topo.index[sat] for apid, sat in routes.items()})
        self.tm_in = 0
        self.tm_udp_sent = 0
        self.tm_tcp_sent = 0
        self.tm_failed: Counter[str] = Counter()
        self.tc_in: Counter[str] = Counter()
        self.tc_routed = 0
        self.clients_dropped = 0
        self.added_ms = Histogram()
        """Wall ms from a TM packet's (emulated) arrival to its hand-over to the sockets."""
        self.telecommands: list[list[Any]] = []
        self._clients: list[_Client] = []
        self.changed = asyncio.Event()
        self._warned: set[str] = set()
        """Set whenever a TM client connects or a TC packet arrives (what tests wait on)."""
        self._tm_udp = _socket(socket.SOCK_DGRAM, spec.tm_udp, "tm_udp") if spec.tm_udp else None
        self._listeners: dict[str, socket.socket] = {}
        try:
            for key, kind in (("tm_tcp", socket.SOCK_STREAM), ("tc_udp", socket.SOCK_DGRAM),
                              ("tc_tcp", socket.SOCK_STREAM)):
                address = getattr(spec, key)
                if address is not None:
                    self._listeners[key] = _socket(kind, address, key)
        except RunError:
            self.close()
            raise

    # --- TM out ---------------------------------------------------------------------------------

    def deliver(self, packet: bytes, at_wall: float) -> None:
        """A TM packet reached the centre at (emulated) wall time ``at_wall``: pass it on."""
        self.tm_in += 1
        if self._tm_udp is not None:
            try:
                self._tm_udp.send(packet)
                self.tm_udp_sent += 1
            except BlockingIOError:
                self.tm_failed["udp_busy"] += 1
            except OSError as exc:  # ECONNREFUSED: nobody listening yet (ICMP port unreachable)
                self.tm_failed[f"udp_{exc.errno}"] += 1
        limit = self.spec.tcp_buffer_bytes
        for client in self._clients:
            if client.closed:
                continue
            if client.buffer and len(client.buffer) + len(packet) > limit:  # one always fits
                self._drop_client(client, "fell behind")
                continue
            client.buffer += packet
            client.ready.set()
            self.tm_tcp_sent += 1
        self.added_ms.add(max(0.0, self.now() - at_wall) * 1000.0)

    def _drop_client(self, client: _Client, why: str) -> None:
        if not client.closed:
            log.warning("mcs tm_tcp client %s disconnected: %s", client.peer, why)
            self.clients_dropped += 1
            client.closed = True
            client.ready.set()
            with contextlib.suppress(OSError):  # wakes its reader: the connection ends now
                client.sock.shutdown(socket.SHUT_RDWR)

    # --- TC in ----------------------------------------------------------------------------------

    def _say_refused(self) -> None:
        """Log each reason for refusing TC packets once (all are counted in the stats file)."""
        for why in self.router.refused.keys() - self._warned:
            self._warned.add(why)
            log.warning("mcs at %s: refused a TC packet (%s); every refusal is counted under "
                        "mcs.tc_refused in the worker's stats file",
                        self.rt.topology.node_ids[self.node], why)

    def telecommand_in(self, packet: bytes, via: str) -> None:
        """A TC packet from the MCS: route it to its satellite, or count why not."""
        self.tc_in[via] += 1
        self.changed.set()
        try:
            self._route(packet)
        finally:
            self._say_refused()

    def _route(self, packet: bytes) -> None:
        if not self.started():
            self.router.refused["before_start"] += 1
            return
        if self.roles.stopped:
            self.router.refused["after_stop"] += 1
            return
        routed = self.router.route(packet)
        if routed is None:
            return
        sat, header = routed
        now = self.now()
        self.rt.stats.clock(now)  # the offer event carries the frame's creation time
        frame = self.roles.telecommand(self.node, sat, len(packet), now, packet=packet)
        self.tc_routed += 1
        if len(self.telecommands) < TC_LOG_LIMIT:
            self.telecommands.append([frame[0], header.apid, header.seq_count, now])
        self.after_input()

    # --- tasks ----------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the accept loops and readers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            name = f"mcs{self.node}"
            if "tm_tcp" in self._listeners:
                tg.create_task(self._accept(tg, self._listeners["tm_tcp"], self._tm_client),
                               name=f"{name}.tm_tcp.accept")
            if "tc_tcp" in self._listeners:
                tg.create_task(self._accept(tg, self._listeners["tc_tcp"], self._tc_client),
                               name=f"{name}.tc_tcp.accept")
            if "tc_udp" in self._listeners:
                tg.create_task(self._tc_datagrams(self._listeners["tc_udp"]),
                               name=f"{name}.tc_udp")

    async def _accept(self, tg: asyncio.TaskGroup, listener: socket.socket,
                      handler: Callable[[socket.socket, Any], Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, peer = await loop.sock_accept(listener)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tg.create_task(handler(sock, peer), name=f"mcs{self.node}.client.{peer[1]}")

    async def _tm_client(self, sock: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        client = _Client(sock, peer)
        self._clients.append(client)
        self.changed.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._tm_writer(client), name=f"mcs{self.node}.tm.{peer[1]}.write")
                while not client.closed:  # a reader only to see the MCS hang up
                    if not await loop.sock_recv(sock, READ_BYTES):
                        client.closed = True
                        client.ready.set()
        except* OSError as group:
            log.info("mcs tm_tcp client %s gone: %s", peer, group.exceptions[0])
        finally:
            client.closed = True
            self._clients.remove(client)
            sock.close()

    async def _tm_writer(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        while not client.closed:
            await client.ready.wait()
            client.ready.clear()
            while client.buffer and not client.closed:
                chunk = bytes(client.buffer)
                client.buffer.clear()
                await loop.sock_sendall(client.sock, chunk)

    async def _tc_client(self, sock: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        splitter = StreamSplitter()
        try:
            while data := await loop.sock_recv(sock, READ_BYTES):
                for packet in splitter.feed(data):
                    self.telecommand_in(packet, "tcp")
        except OSError as exc:
            log.info("mcs tc_tcp client %s gone: %s", peer, exc)
        finally:
            if splitter.pending_bytes:
                self.router.refused["truncated"] += 1
                self._say_refused()
            sock.close()

    async def _tc_datagrams(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                datagram, _peer = await loop.sock_recvfrom(sock, READ_BYTES + 16)
            except OSError as exc:  # an ICMP error queued on the socket: keep reading
                log.info("mcs tc_udp: %s", exc)
                continue
            packet, why = datagram_packet(datagram)
            if packet is None:
                self.tc_in["udp"] += 1
                self.changed.set()
                self.router.refused[why or "bad"] += 1
                self._say_refused()
                continue
            self.telecommand_in(packet, "udp")

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, re-checking whenever the bridge sees something."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    @property
    def tm_clients(self) -> int:
        """TCP clients reading TM now."""
        return sum(not c.closed for c in self._clients)

    def close(self) -> None:
        """Close every socket (after the tasks are cancelled)."""
        for sock in [*self._listeners.values(), *(c.sock for c in self._clients)]:
            sock.close()
        if self._tm_udp is not None:
            self._tm_udp.close()

    def as_dict(self) -> dict[str, Any]:
        """What the bridge passed on and refused, for the stats file."""
        return {"tm_in": self.tm_in, "tm_udp_sent": self.tm_udp_sent,
                "tm_tcp_sent": self.tm_tcp_sent, "tm_failed": dict(self.tm_failed),
                "tcp_clients_dropped": self.clients_dropped, "tc_in": dict(self.tc_in),
                "tc_routed": self.tc_routed, "tc_refused": dict(self.router.refused),
                "added_ms": self.added_ms.to_dict(), "telecommands": self.telecommands}


class McsBridges:
    """Every bridge one worker hosts, behind the one hook Roles calls."""

    def __init__(self, bridges: dict[int, McsBridge]) -> None:
        self.bridges = bridges

    @classmethod
    def open(cls, roles: Roles, *, now: Callable[[], float], started: Callable[[], bool],
             after_input: Callable[[], None]) -> McsBridges | None:
        """Bridges for the hosted ops centres that have ``mcs`` (None when there are none)."""
        topo = roles.rt.topology
        base = topo.n_satellites + topo.n_stations
        bridges: dict[int, McsBridge] = {}
        try:
            for i, centre in enumerate(topo.scenario.ops_centres):
                if centre.mcs is not None and base + i in roles.rt.local:
                    bridges[base + i] = McsBridge(roles, base + i, centre.mcs, now=now,
                                                  started=started, after_input=after_input)
        except RunError:
            for bridge in bridges.values():
                bridge.close()
            raise
        if not bridges:
            return None
        out = cls(bridges)
        roles.mcs_deliver = out.deliver
        return out

    def deliver(self, node: int, packet: bytes, at_wall: float) -> None:
        """Roles' hook: a TM packet reached ops centre ``node``."""
        bridge = self.bridges.get(node)
        if bridge is not None:
            bridge.deliver(packet, at_wall)

    async def serve(self) -> None:
        """Serve every bridge until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for node, bridge in self.bridges.items():
                tg.create_task(bridge.serve(), name=f"mcs{node}")

    def close(self) -> None:
        """Close every bridge's sockets."""
        for bridge in self.bridges.values():
            with contextlib.suppress(OSError):
                bridge.close()

    def as_dict(self) -> dict[str, Any]:
        """Per ops centre id: the bridge's counters."""
        ids = next(iter(self.bridges.values())).rt.topology.node_ids
        return {ids[n]: b.as_dict() for n, b in sorted(self.bridges.items())}
