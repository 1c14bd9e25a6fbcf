"""The socket side of the MCS bridge: an ops centre's TM out to, and TC in from, a real MCS.

For each hosted ops centre with an ``mcs`` setting (orbitmesh/core/mcs_spec.py), the worker opens
a :class:`McsBridge`:

* TM: every space packet that reaches the centre (housekeeping telemetry and the satellites' TM
  acknowledgements, in the order the emulation delivers them) goes out — one datagram each to
  ``tm_udp``, and back to back to every client connected to ``tm_tcp``. The datagrams leave from
  the pacer (nodes/mcs_pacer.py), a process that sends each at its emulated arrival instant: the
  runtime announces a packet when its last hop is scheduled, and the worker's loop later gives
  its verdict (delivered or dropped), which the pacer waits for whenever a link state could still
  change the packet's fate. The TCP stream (nodes/mcs_tm_stream.py) is written as the loop
  delivers (it carries the loop's lateness); a client that falls ``tcp_buffer_bytes`` behind is
  disconnected (counted), so one stuck MCS never holds the worker's memory.
* TC: space packets arriving on ``tc_udp`` (one per datagram) or ``tc_tcp`` (back to back) are
  read (nodes/mcs_tc_input.py), routed by APID (nodes/mcs_packets.py) and originated at the
  centre as TELECOMMAND frames with the packet as payload; the satellite's acknowledgement
  comes back as TM. A telecommand enters the scenario when the kernel received it
  (``SO_TIMESTAMPNS``; on TCP, the segment read last), not when the loop read it.

Nothing is lost silently: every packet refused, every failed send, every dropped client is
counted in the worker's stats file under ``mcs`` (docs/mcs.md). The tasks (accept loops, one
reader and one writer per TCP client, the UDP TC reader) live in one TaskGroup that
:meth:`McsBridges.serve` owns; the worker runs it in its own TaskGroup and cancels it on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from nodes.mcs_pacer import MAX_MESSAGE
from nodes.mcs_pacer_handle import Pacer
from nodes.mcs_packets import TcRouter
from nodes.mcs_tc_input import tc_datagrams, tc_stream_client
from nodes.mcs_tm_stream import TmStream, open_socket
from nodes.roles import Roles
from orbitmesh.core.histogram import Histogram
from orbitmesh.core.mcs_spec import McsSpec, check_routes, tc_routes
from orbitmesh.errors import RunError
from orbitmesh.protocol.wire import ACK, F_DST, F_KIND, F_PAYLOAD, TELEMETRY

log = logging.getLogger("orbitmesh.mcs")
TC_LOG_LIMIT = 100_000
"""Telecommands kept in the stats file for pairing (frame id, APID, count, wall)."""


class McsBridge:
    """The bridge of one ops centre (node ``node``)."""

    def __init__(self, roles: Roles, node: int, spec: McsSpec, *, now: Callable[[], float],
                 started: Callable[[], bool], after_input: Callable[[], None],
                 run_id: str = "") -> None:
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
        self.tm_failed: Counter[str] = Counter()
        self.tc_in: Counter[str] = Counter()
        self.tc_routed = 0
        self.added_ms = Histogram()
        """Wall ms from a TM packet's (emulated) arrival to the loop's delivery (the TCP path)."""
        self.tc_read_late_ms = Histogram()
        """Wall ms from a UDP telecommand's kernel receipt to the loop reading it."""
        self._announced: dict[int, tuple[int, bytes]] = {}
        """id(packet) -> (pacer id, packet) of TM announced to the pacer, awaiting the loop."""
        self._next_id = 0
        self.telecommands: list[list[Any]] = []
        self.changed = asyncio.Event()
        self.stream = TmStream(f"mcs{node}", spec.tcp_buffer_bytes, self.changed.set)
        self._warned: set[str] = set()
        """Set whenever a TM client connects or a TC packet arrives (what tests wait on)."""
        self._listeners: dict[str, socket.socket] = {}
        self.pacer: Pacer | None = None
        try:
            if spec.tm_udp:
                open_socket(socket.SOCK_DGRAM, spec.tm_udp, "tm_udp").close()  # a clear error here
                self.pacer = Pacer(spec.tm_udp, f"{run_id}/{topo.node_ids[node]}")
            for key, kind in (("tm_tcp", socket.SOCK_STREAM), ("tc_udp", socket.SOCK_DGRAM),
                              ("tc_tcp", socket.SOCK_STREAM)):
                address = getattr(spec, key)
                if address is not None:
                    self._listeners[key] = open_socket(kind, address, key)
        except RunError:
            self.close()
            raise

    # --- TM out ---------------------------------------------------------------------------------

    def announce(self, frame: list[Any], due_wall: float) -> None:
        """The runtime scheduled ``frame``'s arrival here at ``due_wall``: tell the pacer."""
        kind = frame[F_KIND]
        packet = frame[F_PAYLOAD]
        if self.pacer is None or frame[F_DST] != self.node or not packet or kind not in (
                TELEMETRY, ACK):
            return
        if due_wall < self.rt.stats.event_wall:
            # Overdue already (handed over late): the runtime handles it next, perhaps under a
            # state applied just now; the loop's delivery decides (deliver's "now" path).
            return
        self._next_id += 1
        if self.pacer.schedule(self._next_id, due_wall, packet):
            self._announced[id(packet)] = (self._next_id, packet)
            self.rt.call_at(due_wall, functools.partial(self._confirm, id(packet)))

    def _confirm(self, key: int, _due: float) -> None:
        """After the arrival's instant: a packet still announced was not delivered."""
        entry = self._announced.pop(key, None)
        if entry is not None and self.pacer is not None:
            self.pacer.verdict(entry[0], False)

    def deliver(self, packet: bytes, at_wall: float) -> None:
        """A TM packet reached the centre at (emulated) wall time ``at_wall``: pass it on."""
        self.tm_in += 1
        if self.pacer is not None and packet:  # (a frame injected by hand may carry none)
            entry = self._announced.pop(id(packet), None)
            if entry is not None and entry[1] is packet:
                self.pacer.verdict(entry[0], True)
            else:
                self.pacer.now(at_wall, packet)
        self.stream.push(packet)
        self.added_ms.add(max(0.0, self.now() - at_wall) * 1000.0)

    # --- TC in ----------------------------------------------------------------------------------

    def _say_refused(self) -> None:
        """Log each reason for refusing TC packets once (all are counted in the stats file)."""
        for why in self.router.refused.keys() - self._warned:
            self._warned.add(why)
            log.warning("mcs at %s: refused a TC packet (%s); every refusal is counted under "
                        "mcs.tc_refused in the worker's stats file",
                        self.rt.topology.node_ids[self.node], why)

    def telecommand_in(self, packet: bytes, via: str, at_wall: float | None = None) -> None:
        """A TC packet from the MCS (received at ``at_wall``, else now): route it, or count why
        not."""
        self.tc_in[via] += 1
        self.changed.set()
        try:
            self._route(packet, at_wall)
        finally:
            self._say_refused()

    def _route(self, packet: bytes, at_wall: float | None = None) -> None:
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
        if at_wall is not None and self.rt.t0_wall <= at_wall <= now:  # when the kernel had it
            self.tc_read_late_ms.add((now - at_wall) * 1000.0)
            now = at_wall
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
                tg.create_task(self._accept(tg, self._listeners["tm_tcp"], self.stream.client),
                               name=f"{name}.tm_tcp.accept")
            if "tc_tcp" in self._listeners:
                client = functools.partial(tc_stream_client, on_packet=self.telecommand_in,
                                           on_truncated=self._truncated)
                tg.create_task(self._accept(tg, self._listeners["tc_tcp"], client),
                               name=f"{name}.tc_tcp.accept")
            if "tc_udp" in self._listeners:
                tg.create_task(tc_datagrams(self._listeners["tc_udp"],
                                            on_packet=self.telecommand_in,
                                            on_bad=self._bad_datagram),
                               name=f"{name}.tc_udp")
            if self.pacer is not None:
                tg.create_task(self._pacer_reports(self.pacer), name=f"{name}.pacer")

    async def _pacer_reports(self, pacer: Pacer) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(pacer.sock, MAX_MESSAGE):
            pacer.read_report(data)
        log.error("the MCS bridge's pacer at %s exited (code %s): TM datagrams stop here",
                  self.rt.topology.node_ids[self.node], pacer.process.poll())

    async def _accept(self, tg: asyncio.TaskGroup, listener: socket.socket,
                      handler: Callable[[socket.socket, Any], Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, peer = await loop.sock_accept(listener)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tg.create_task(handler(sock, peer), name=f"mcs{self.node}.client.{peer[1]}")

    def _truncated(self) -> None:
        """A ``tc_tcp`` client hung up in the middle of a packet."""
        self.router.refused["truncated"] += 1
        self._say_refused()

    def _bad_datagram(self, why: str) -> None:
        """A ``tc_udp`` datagram that is not one whole packet."""
        self.tc_in["udp"] += 1
        self.changed.set()
        self.router.refused[why] += 1
        self._say_refused()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, re-checking whenever the bridge sees something."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    @property
    def tm_clients(self) -> int:
        """TCP clients reading TM now."""
        return self.stream.live

    @property
    def tm_tcp_sent(self) -> int:
        """Packets appended to a TM client's stream (per client)."""
        return self.stream.sent

    @property
    def clients_dropped(self) -> int:
        """TM clients disconnected for falling behind."""
        return self.stream.dropped

    def close(self) -> None:
        """Close every socket (after the tasks are cancelled)."""
        for sock in self._listeners.values():
            sock.close()
        self.stream.close()
        if self.pacer is not None:
            self.pacer.close()

    def as_dict(self) -> dict[str, Any]:
        """What the bridge passed on and refused, for the stats file."""
        pacer: dict[str, Any] = {}
        tm_failed = Counter(self.tm_failed)
        if self.pacer is not None:
            pacer = dict(self.pacer.counts)
            self.tm_udp_sent = int(pacer.get("committed", 0) + pacer.get("held_sent", 0))
            tm_failed.update({k: v for k, v in pacer.items() if k.startswith("udp_")})
            tm_failed.update({f"pacer_{k}": v for k, v in self.pacer.failed.items()})
        return {"tm_in": self.tm_in, "tm_udp_sent": self.tm_udp_sent,
                "tm_tcp_sent": self.tm_tcp_sent, "tm_failed": dict(tm_failed),
                "udp_pacer": pacer, "tc_read_late_ms": self.tc_read_late_ms.to_dict(),
                "tcp_clients_dropped": self.clients_dropped, "tc_in": dict(self.tc_in),
                "tc_routed": self.tc_routed, "tc_refused": dict(self.router.refused),
                "added_ms": self.added_ms.to_dict(), "telecommands": self.telecommands}


class McsBridges:
    """Every bridge one worker hosts, behind the one hook Roles calls."""

    def __init__(self, bridges: dict[int, McsBridge], *, gated_topics: Sequence[str] = (),
                 finished: Callable[[], bool] = lambda: False) -> None:
        self.bridges = bridges
        self.pacers = [b.pacer for b in bridges.values() if b.pacer is not None]
        self.gated_topics = frozenset(gated_topics)
        self.finished = finished
        self._gated = False

    @classmethod
    def open(cls, roles: Roles, *, now: Callable[[], float], started: Callable[[], bool],
             after_input: Callable[[], None], gated_topics: Sequence[str] = (),
             finished: Callable[[], bool] = lambda: False,
             run_id: str = "") -> McsBridges | None:
        """Bridges for the hosted ops centres that have ``mcs`` (None when there are none)."""
        topo = roles.rt.topology
        base = topo.n_satellites + topo.n_stations
        bridges: dict[int, McsBridge] = {}
        try:
            for i, centre in enumerate(topo.scenario.ops_centres):
                if centre.mcs is not None and base + i in roles.rt.local:
                    bridges[base + i] = McsBridge(roles, base + i, centre.mcs, now=now,
                                                  started=started, after_input=after_input,
                                                  run_id=run_id)
        except RunError:
            for bridge in bridges.values():
                bridge.close()
            raise
        if not bridges:
            return None
        out = cls(bridges, gated_topics=gated_topics, finished=finished)
        roles.mcs_deliver = out.deliver
        if out.pacers:  # the runtime's hooks: arrivals scheduled here, link states scheduled
            roles.rt.arrival_watch = frozenset(n for n, b in bridges.items() if b.pacer)
            roles.rt.on_arrival = out.announce
            roles.rt.on_barrier = out.barrier
        return out

    def announce(self, _u: int, v: int, frame: list[Any], due_wall: float) -> None:
        """The runtime's hook: ``frame``'s arrival at bridged centre ``v`` is due at
        ``due_wall``."""
        self.bridges[v].announce(frame, due_wall)

    def barrier(self, due_wall: float) -> None:
        """The runtime's hook: a link state will take effect at ``due_wall``."""
        for pacer in self.pacers:
            pacer.barrier(due_wall)
        rt = next(iter(self.bridges.values())).rt
        rt.call_at(due_wall, self._applied)  # after the state (it goes first at its instant)

    def _applied(self, due_wall: float) -> None:
        for pacer in self.pacers:
            pacer.applied(due_wall)

    def close_gate(self, batch: Sequence[Any]) -> bool:
        """Before the worker stamps ``batch``: hold the pacers if it may change link states or
        end the run (True: call :meth:`open_gate` after dispatching it)."""
        if not self.pacers or not any(m.topic in self.gated_topics for m in batch):
            return False
        for pacer in self.pacers:
            pacer.gate(True)
        return True

    def open_gate(self) -> None:
        """The gated batch is dispatched (its states announced): let the pacers go on."""
        for pacer in self.pacers:
            if self.finished():
                pacer.freeze()
            pacer.gate(False)

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
