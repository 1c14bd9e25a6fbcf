"""Endpoints of the nodes one worker hosts: real packets and datagrams in and out of the network.

* IP endpoints: a TUN device per node inside its own network namespace. Every packet a program
  sends into it becomes a DATA frame of flow ``FLOW_ENDPOINT`` (size = packet length, payload =
  the packet) originated at that node for the node owning the destination address; it meets the
  same queues, serialisation, delays, loss and faults as any frame, and is written into the
  destination's TUN when it is delivered. A packet for an address of the prefix that no endpoint
  has is dropped (``no_endpoint``) and answered with ICMP unreachable; one larger than the
  smallest MTU on its current path is dropped (``mtu``) and answered with ICMP fragmentation
  needed (IPv4 with DF) / packet too big (IPv6) naming that MTU.
* UDP pipes: a loopback socket per pipe at its entry node; datagrams become frames for the pipe's
  far node, which sends them to the pipe's ``deliver`` address from a socket of its own; what
  comes back to that socket returns along the pipe to the last sender
  (nodes/udp_pipes.py holds their sockets).
* MQTT outboxes: every frame delivered to such a node is published on ``node/<id>/out``.

Packets and datagrams that cannot become frames at all (not IP, outside the prefix, before the
run's clock started or after traffic stopped) are counted per node under ``refused``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from nodes import icmp
from nodes.roles import Roles
from nodes.tun import open_tun
from nodes.udp_pipes import MAX_PACKET, READ_BURST, UdpPipes
from orbitmesh.core.topology import GSL, ISL, TERRESTRIAL
from orbitmesh.errors import RunError
from orbitmesh.protocol.transport import Transport
from orbitmesh.protocol.wire import (
    DATA,
    F_CREATED,
    F_DST,
    F_DUE,
    F_FLOW,
    F_HOPS,
    F_PAYLOAD,
    F_PROP,
    F_REF,
    FLOW_ENDPOINT,
    Topics,
    encode_batch,
    new_frame,
)
from orbitmesh.run.launch import netns

log = logging.getLogger("orbitmesh.endpoints")
TRACE_ENV = "ORBITMESH_ENDPOINT_TRACE"
"""Debug: a directory; each worker appends one JSON line per TUN packet in and out there
(wall stamps of the read, of the due arrival and of the write), for bench/endpoint_stages.py."""


class NodeCounts:
    """What one node's endpoints offered, delivered and refused (by reason)."""

    __slots__ = ("delivered", "offered", "refused")

    def __init__(self) -> None:
        self.offered = 0
        self.delivered = 0
        self.refused: Counter[str] = Counter()


class EndpointHost:
    """The endpoints of one worker's nodes; :meth:`open` makes them, :meth:`close` removes them."""

    def __init__(self, roles: Roles, plan: dict[str, Any], *, transport: Transport,
                 topics: Topics, now: Callable[[], float], started: Callable[[], bool],
                 after_input: Callable[[], None], restarted: bool = False) -> None:
        self.roles = roles
        self.rt = roles.rt
        self.plan = plan
        self.transport = transport
        self.topics = topics
        self.now = now
        self.started = started
        self.after_input = after_input
        self.restarted = restarted
        topo = self.rt.topology
        rules = topo.scenario.links
        self.mtu_by_kind = {ISL: rules.isl.mtu_bytes, GSL: rules.gsl.mtu_bytes,
                            TERRESTRIAL: rules.terrestrial.mtu_bytes}
        self.tun_mtu = max(self.mtu_by_kind.values())
        self.router = (icmp.address_bytes(plan["gateway"][0]),
                       icmp.address_bytes(plan["gateway"][1]))
        self.prefixes = (ipaddress.ip_network(plan["ipv4_prefix"]),
                         ipaddress.ip_network(plan["ipv6_prefix"]))
        self.by_address: dict[bytes, int] = {}
        for e in plan["ip"]:
            self.by_address[icmp.address_bytes(e["ipv4"])] = e["index"]
            self.by_address[icmp.address_bytes(e["ipv6"])] = e["index"]
        local = self.rt.local
        self.ip_entries = [e for e in plan["ip"] if e["index"] in local]
        index = topo.index
        self.udp = UdpPipes(self, [(i, index[p["node"]], index[p["to"]], p)
                                   for i, p in enumerate(plan["udp"])])
        self.mqtt_nodes = {index[n] for n in plan["mqtt"]} & local
        self.tun_fd: dict[int, int] = {}
        self.counts: dict[int, NodeCounts] = {}
        self.made: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        trace_dir = os.environ.get(TRACE_ENV)
        self._trace_path = os.path.join(trace_dir, f"ep-{os.getpid()}.jsonl") if trace_dir else ""
        self._trace: list[list[Any]] | None = [] if trace_dir else None
        """Kept in memory and written at close: encoding and writing a line between a TUN
        write and the worker's sleep would hold the CPU the woken program is waiting for."""

    def counts_of(self, node: int) -> NodeCounts:
        """The counters of ``node`` (made on first use)."""
        c = self.counts.get(node)
        if c is None:
            c = self.counts[node] = NodeCounts()
        return c

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make this worker's namespaces, TUNs and pipe sockets and start reading them."""
        self._loop = loop
        atexit.register(self.close)
        try:
            for e in self.ip_entries:
                fd = open_tun(e["tun"])
                self.tun_fd[e["index"]] = fd
                if "container" in e:
                    if not self._into_container(e, fd):
                        continue
                else:
                    self.made.append(e["namespace"])
                    netns.create(e, self.plan, self.tun_mtu, replace=self.restarted)
                loop.add_reader(fd, self._read_tun, e["index"], fd)
            self.udp.open(loop)
        except Exception:
            self.close()
            raise

    def _into_container(self, e: dict[str, Any], fd: int) -> bool:
        """Move the TUN into the node's container; False (said, and counted) when it is gone.

        A container that failed to start or already exited is the launcher's to report (with
        its logs); here its node simply has no program: frames for it count as ``no_tun_here``.
        """
        try:
            netns.attach_container(e, self.plan, self.tun_mtu)
        except RunError as exc:
            log.error("endpoint %s: %s", e["node"], exc)
            del self.tun_fd[e["index"]]
            os.close(fd)
            self.counts_of(e["index"]).refused["container_attach_failed"] += 1
            return False
        return True

    def close(self) -> None:
        """Stop reading, close every TUN (which removes it) and delete the namespaces."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        for fd in self.tun_fd.values():
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(Exception):
                    loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self.udp.close(loop)
        for ns in self.made:
            try:
                netns.remove(ns)
            except Exception as exc:  # a failed removal is reported, the others still go
                log.error("could not remove namespace %s: %s", ns, exc)
        if self._trace:
            with open(self._trace_path, "a") as f:
                f.writelines(json.dumps(row) + "\n" for row in self._trace)
            self._trace = []
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def record(self) -> dict[str, Any]:
        """What this worker made, for ``endpoints-w<K>.json``."""
        return {"pid": os.getpid(), "namespaces": list(self.made),
                "udp_listen": [self.plan["udp"][i]["listen"] for i in self.udp.listen],
                "mqtt": [self.rt.topology.node_ids[n] for n in sorted(self.mqtt_nodes)]}

    def as_dict(self) -> dict[str, Any]:
        """Per node: packets offered, delivered, refused before becoming frames (by reason)."""
        ids = self.rt.topology.node_ids
        return {ids[n]: {"offered": c.offered, "delivered": c.delivered,
                         "refused": dict(sorted(c.refused.items()))}
                for n, c in sorted(self.counts.items())}

    # --- into the network -----------------------------------------------------------------------

    def _read_tun(self, node: int, fd: int) -> None:
        for _ in range(READ_BURST):
            try:
                packet = os.read(fd, MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # the device went away (its container exited): stop reading
                log.error("reading the TUN of node %d: %s; no longer reading it (frames for the "
                          "node now count as no_tun_here)", node, exc)
                self._drop_tun(node, fd)
                self.counts_of(node).refused[f"tun_gone:{exc.errno}"] += 1
                break
            at_wall = self.now()
            if self._trace is not None:
                self._trace.append(["in", node, packet[-8:].hex(), at_wall])
            self.packet_in(node, packet, at_wall)
        self.after_input()

    def _drop_tun(self, node: int, fd: int) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
        if self.tun_fd.get(node) == fd:
            del self.tun_fd[node]
        with contextlib.suppress(OSError):
            os.close(fd)

    def packet_in(self, u: int, packet: bytes, at_wall: float) -> None:
        """An IP packet leaves a program at node ``u``: carry it, or drop it with its reason."""
        counts = self.counts_of(u)
        where = icmp.destination(packet)
        if where is None:
            counts.refused["not_ip"] += 1
            return
        version, dst_bytes = where
        v = self.by_address.get(dst_bytes)
        if v is None and ipaddress.ip_address(dst_bytes) not in self.prefixes[version == 6]:
            counts.refused["outside_prefix"] += 1  # multicast, link-local: no router forwards
            return
        if not self.accepting(u, counts, at_wall):
            return
        if self.rt.suppressed(FLOW_ENDPOINT, u):
            return
        counts.offered += 1
        frame = self.frame(u, v if v is not None else u, packet, None, at_wall)
        if v is None:
            self.rt.stats.offer(frame)
            self.rt.stats.drop(frame, "no_endpoint", u)
            self._to_tun(u, icmp.unreachable(packet, self.router))
            return
        mtu = self.path_mtu(u, frame)
        if len(packet) > mtu:
            self.rt.stats.offer(frame)
            self.rt.stats.drop(frame, "mtu", u)
            if icmp.dont_fragment(packet):
                self._to_tun(u, icmp.too_big(packet, mtu, self.router))
            return
        self.rt.originate(u, frame, at_wall)

    def accepting(self, u: int, counts: NodeCounts, at_wall: float) -> bool:
        """Whether input at ``u`` may become a frame now (else counted as refused)."""
        # The clock message arrives ahead of scenario time 0; before 0 there are no routes yet,
        # so a packet then is refused as early rather than dropped as no_route.
        if not self.started() or self.rt.scenario_s(at_wall) < 0:
            counts.refused["before_start"] += 1
            return False
        if self.roles.stopped:
            counts.refused["after_stop"] += 1
            return False
        return True

    def frame(self, u: int, v: int, payload: bytes, ref: Any, at_wall: float) -> list[Any]:
        """A DATA frame of flow FLOW_ENDPOINT carrying ``payload`` from ``u`` to ``v``."""
        rt = self.rt
        route = None
        if v < rt.topology.n_satellites and v not in rt.dest_row:  # satellites: source-routed
            route = rt.source_route(u, v, None)
        return new_frame(self.roles.frame_id(), DATA, FLOW_ENDPOINT, u, v, len(payload),
                         at_wall, route=route, ref=ref, payload=payload)

    def path_mtu(self, u: int, frame: list[Any]) -> int:
        """Smallest link MTU on the frame's current path from ``u`` (as far as it is routed)."""
        rt = self.rt
        mtu = self.tun_mtu
        node = u
        for _ in range(rt.n_nodes):
            if node == frame[F_DST]:
                break
            nxt = rt.route_next(node, frame)
            live = rt.link(node, nxt) if nxt >= 0 else None
            if live is None:
                break  # the runtime drops it with the reason (no_route, link_down, fault)
            mtu = min(mtu, self.mtu_by_kind[live[1]])
            node = nxt
        return mtu

    # --- out of the network ---------------------------------------------------------------------

    def deliver(self, node: int, frame: list[Any]) -> None:
        """A frame was delivered to ``node``: hand it to the node's endpoint(s)."""
        if node in self.mqtt_nodes:
            self.transport.publish(self.topics.node_outbox(self.rt.topology.node_ids[node]),
                                   encode_batch([(node, frame)]))
        if frame[F_FLOW] != FLOW_ENDPOINT:
            return
        counts = self.counts_of(node)
        ref = frame[F_REF]
        if ref is None:
            if node in self.tun_fd:
                counts.delivered += 1
                before = self.now() if self._trace is not None else 0.0
                self._to_tun(node, frame[F_PAYLOAD])
                if self._trace is not None:
                    self._trace.append(
                        ["out", node, frame[F_PAYLOAD][-8:].hex(), frame[F_CREATED],
                         frame[F_DUE], self.now(), before, frame[F_PROP],
                         self.rt.now_wall, frame[F_HOPS]])
            elif node not in self.mqtt_nodes:
                counts.refused["no_tun_here"] += 1
            return
        self.udp.deliver(ref, frame[F_PAYLOAD], counts)

    def _to_tun(self, node: int, packet: bytes) -> None:
        fd = self.tun_fd.get(node)
        if fd is None:
            return
        try:
            os.write(fd, packet)
        except OSError as exc:  # the kernel's TUN queue is full, or the device went away
            self.counts_of(node).refused[f"tun_write_failed:{exc.errno}"] += 1

