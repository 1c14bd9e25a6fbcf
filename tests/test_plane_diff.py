"""The batched plane (nodes/plane.py) against NodeRuntime, the reference, on random cases.

Random meshes of operations centres with hand-made links and shortest-path tables, random
traffic, one or two runtimes exchanging batches on a virtual clock; link states that change
mid-run, a node that fails, a link cut by a fault, a degraded (rate-capped) link and queues that
overflow. With no loss both planes must agree exactly: every delivery (frame id, time to 1e-9 s,
hops), every drop count per reason and per fault, the hop records of the event log, and
conservation. Loss gets its own seeded test: the plane draws from its own stream, so its drops
differ frame by frame and must agree in rate (binomial bounds).
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from nodes import plane_lane
from nodes.plane import PlaneRuntime
from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import TERRESTRIAL, Topology, build_topology
from orbitmesh.protocol.wire import DATA, F_HOPS, F_ID, F_PAYLOAD, new_frame

T0_WALL = 1_000.0
ONE_NANOSECOND_S = 1e-9
STEP_S = 200e-6


def scenario(n: int, *, loss: float = 0.0, queue: int = 4, flows: int = 2) -> Topology:
    """``n`` operations centres and no links of their own (the tests give them links)."""
    lines = ["name: diff", "epoch: 2026-01-01T00:00:00Z", "duration_s: 60", "seed: 5",
             "constellations:", "  - name: idle", "    operator: t",
             "    walker: {inclination_deg: 53.0, satellites: 1, planes: 1, phasing: 0,"
             " altitude_km: 550.0}", "    isl: false", "    max_gsl: 0",
             "    telemetry: {rate_hz: 0.0}", "stations: []", "ops_centres:"]
    lines += [f"  - {{name: c{i:02d}, operator: t, lat_deg: {i * 0.1:.1f}, lon_deg: 0.0, "
              f"stations: [], peers: []}}" for i in range(n)]
    lines += ["links:", "  isl: {topology: none}",
              f"  terrestrial: {{rate_bps: 2.0e6, loss: {loss}, queue_frames: {queue}}}",
              "traffic:"]
    lines += [f"  - {{name: f{k}, source: c00, destination: c01, pattern: poisson, rate_pps: 1,"
              f" size: {{distribution: fixed, bytes: 100}}}}" for k in range(flows)]
    return build_topology(parse_scenario("\n".join(lines) + "\n", Path("<diff>")))


class Links:
    """A link state: pairs, delays and the next-hop table over every node as destination."""

    def __init__(self, n: int, pairs: list[tuple[int, int]], rng: random.Random) -> None:
        self.a = np.array([p[0] for p in pairs], dtype=np.int64)
        self.b = np.array([p[1] for p in pairs], dtype=np.int64)
        self.kind = np.full(len(pairs), TERRESTRIAL, dtype=np.int64)
        self.delay_s = np.array([rng.uniform(2e-4, 2e-3) for _ in pairs])
        graph = csr_matrix((self.delay_s, (self.a, self.b)), shape=(n, n))
        _dist, pred = shortest_path(graph, directed=False, return_predecessors=True)
        # table[row = destination d, node u] = next hop from u towards d: pred of u in d's tree
        table = pred.astype(np.int64)
        table[table < 0] = -1
        self.table = table
        self.destinations = np.arange(n, dtype=np.int64)

    def without(self, pair: tuple[int, int]) -> Links:
        """The same state with one link gone (the tables still route over it)."""
        out = object.__new__(Links)
        keep = ~(((self.a == pair[0]) & (self.b == pair[1]))
                 | ((self.a == pair[1]) & (self.b == pair[0])))
        out.a, out.b, out.kind, out.delay_s = (self.a[keep], self.b[keep], self.kind[keep],
                                               self.delay_s[keep])
        out.table, out.destinations = self.table, self.destinations
        return out


def random_pairs(n: int, rng: random.Random, extra: int) -> list[tuple[int, int]]:
    """A connected mesh: a random spanning chain plus ``extra`` random chords."""
    order = list(range(n))
    rng.shuffle(order)
    pairs = {tuple(sorted((order[i], order[i + 1]))) for i in range(n - 1)}
    while len(pairs) < min(n - 1 + extra, n * (n - 1) // 2):
        x, y = rng.sample(range(n), 2)
        pairs.add((min(x, y), max(x, y)))
    return sorted(pairs)  # type: ignore[arg-type]


class Run:
    """Runtimes of one implementation on one case, with mailboxes and a virtual clock."""

    def __init__(self, cls: type[NodeRuntime], topo: Topology, owner: np.ndarray) -> None:
        workers = int(owner.max()) + 1
        self.inbox: list[list[bytes]] = [[] for _ in range(workers)]
        self.logs = [io.BytesIO() for _ in range(workers)]
        self.delivered: list[tuple[int, float, int, bytes]] = []
        self.runtimes = []
        for k in range(workers):
            rt = cls(topo, k, owner, send=self._sender(), speed=1.0, seed=3,
                     stats=Stats(self.logs[k], speed=1.0))
            rt.t0_wall = T0_WALL
            rt.on_deliver = self._recorder()
            self.runtimes.append(rt)

    def _sender(self) -> Callable[[int, bytes], None]:
        def send(worker: int, payload: bytes) -> None:
            self.inbox[worker].append(payload)
        return send

    def _recorder(self) -> Callable[[int, list[Any], float], None]:
        def record(_node: int, frame: list[Any], at: float) -> None:
            self.delivered.append((frame[F_ID], at, frame[F_HOPS], frame[F_PAYLOAD]))
        return record

    def state(self, at_wall: float, links: Links, **faults: Any) -> None:
        """Every runtime takes ``links`` (and faults) at ``at_wall``, before anything due then."""
        for rt in self.runtimes:
            def apply(due: float, rt: NodeRuntime = rt) -> None:
                rt.apply_state(0.0, links.a, links.b, links.kind, links.delay_s,
                               links.destinations, {None: links.table}, now=due, **faults)
            if at_wall <= T0_WALL:
                apply(T0_WALL)
            else:
                rt.call_at(at_wall, apply, first=True)

    def offer(self, src: int, dst: int, fid: int, flow: int, size: int, at_wall: float,
              payload: bytes = b"") -> None:
        """Node ``src`` originates a frame (with ``payload``) at ``at_wall``."""
        rt = self.runtimes[int(rt_owner(self.runtimes[0], src))]
        frame = new_frame(fid, DATA, flow, src, dst, size, at_wall, payload=payload)

        def fire(due: float) -> None:
            if not rt.suppressed(flow, src):
                rt.originate(src, frame, due)
        rt.call_at(at_wall, fire)

    def run(self) -> None:
        """Step the clock until nothing is pending anywhere."""
        now = T0_WALL
        while True:
            busy = False
            for k, rt in enumerate(self.runtimes):
                batches, self.inbox[k] = self.inbox[k], []
                for payload in batches:
                    rt.receive_batch(payload, now, run=False)
                rt.run_due(now)
                busy = busy or rt.next_due is not None or bool(batches)
            if not busy and not any(self.inbox):
                return
            now += STEP_S

    def books(self) -> dict[str, Any]:
        """Counters to compare: per flow offered/delivered/dropped by reason, per fault."""
        offered: Counter[Any] = Counter()
        delivered: Counter[Any] = Counter()
        dropped: Counter[Any] = Counter()
        faults: Counter[Any] = Counter()
        crossed: Counter[int] = Counter()
        for rt in self.runtimes:
            rt.stats.as_dict()  # what a worker writes: the plane folds its counts in first
            for flow, fs in rt.stats.flows.items():
                offered[flow] += fs.offered
                crossed[flow] += fs.remote_out * 1_000_000 + fs.remote_in
                delivered[flow] += fs.delivered
                for reason, count in fs.dropped.items():
                    dropped[(flow, reason)] += count
            for fault, per_flow in rt.stats.fault_drops.items():
                for flow, count in per_flow.items():
                    faults[(fault, flow)] += count
        held = sum(len(rt.held_frames()) for rt in self.runtimes)
        return {"offered": offered, "delivered": delivered, "dropped": dropped,
                "faults": faults, "held": held, "crossed": crossed,
                "malformed": sum(rt.stats.malformed_count for rt in self.runtimes)}

    def hop_records(self) -> Counter[tuple[Any, ...]]:
        """Every ``hop`` record of the event logs."""
        out: Counter[tuple[Any, ...]] = Counter()
        for log in self.logs:
            for record in msgpack.Unpacker(io.BytesIO(log.getvalue()), raw=False):
                if record[0] == "hop":
                    out[tuple(record)] += 1
        return out


def rt_owner(rt: NodeRuntime, node: int) -> int:
    """Worker that hosts ``node``."""
    return rt.owner_of[node]


def build_case(cls: type[NodeRuntime], seed: int, workers: int, *, loss: float = 0.0,
               frames: int = 300, payloads: bool = False, churn: int = 0) -> Run:
    """A random case: mesh, traffic, state changes and faults, all drawn from ``seed``;
    ``payloads``: every other frame carries bytes of its own; ``churn``: that many more link
    states, dense and sparse in turn, so links come and go again and again."""
    rng = random.Random(seed)
    n = rng.randint(4, 9)
    topo = scenario(n, loss=loss, queue=rng.choice([2, 4, 1000]))
    owner = np.array([rng.randrange(workers) for _ in range(topo.n_nodes)], dtype=np.int64)
    run = Run(cls, topo, owner)
    first = Links(topo.n_nodes, random_pairs(n, rng, rng.randint(0, n)), rng)
    run.state(T0_WALL, first)
    span_s = 0.3
    for i in range(frames):  # bursts make queues overflow
        src, dst = rng.sample(range(n), 2)
        at = T0_WALL + 1e-3 + rng.random() * span_s
        payload = i.to_bytes(4, "big") * (1 + i % 7) if payloads and i % 2 else b""
        run.offer(src, dst, i, rng.randrange(2), rng.choice([100, 400, 1500]), at, payload)
        if rng.random() < 0.2:  # a burst from the same source
            for j in range(rng.randint(2, 8)):
                run.offer(src, dst, 10_000 + i * 10 + j, 0, 1500, at)
    if rng.random() < 0.8:  # links change mid-run
        run.state(T0_WALL + span_s * 0.3, Links(topo.n_nodes,
                                                random_pairs(n, rng, rng.randint(0, n)), rng))
    if rng.random() < 0.6:  # a link cut by a fault
        state = Links(topo.n_nodes, random_pairs(n, rng, n), rng)
        pair = (int(state.a[0]), int(state.b[0]))
        run.state(T0_WALL + span_s * 0.5, state.without(pair), cut={pair: "cut-1"},
                  degraded={(int(state.a[-1]), int(state.b[-1])): (0.0, 0.0, 2e5, "slow-1")})
    for k in range(churn):  # many states, each with many links, mid-traffic
        extra = n * (n - 1) // 2 if k % 2 else rng.randint(0, 2)
        state = Links(topo.n_nodes, random_pairs(n, rng, extra), rng)
        at = T0_WALL + span_s * (0.05 + 0.9 * (k + 0.5) / churn)
        if k % 3 == 2:  # routes to one destination gone only because of a fault (-2)
            state.table = state.table.copy()
            state.table[rng.randrange(n)] = -2
            run.state(at, state, blame="cut-2")
        else:
            run.state(at, state)
    if rng.random() < 0.6:  # a node fails
        node = rng.randrange(n)
        run.state(T0_WALL + span_s * 0.7, Links(topo.n_nodes, random_pairs(n, rng, n), rng),
                  down={node: "down-1"})
    return run


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("seed", range(12))
def test_the_plane_does_what_the_reference_does(seed: int, workers: int) -> None:
    assert_agree(build_case(NodeRuntime, seed, workers), build_case(PlaneRuntime, seed, workers))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("seed", range(100, 106))
@pytest.mark.parametrize("forget", [False, True])
def test_payloads_and_link_churn_as_the_reference(seed: int, workers: int, forget: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames with payloads (kept beside the lane, handed over as list frames), link states
    that change many times, links going and coming back while frames are on them, routes gone
    because of a fault; ``forget``: the lane drops its idle transmitters at every state."""
    if forget:
        monkeypatch.setattr(plane_lane, "FORGET_SLACK", -1_000_000)
    ref = build_case(NodeRuntime, seed, workers, payloads=True, churn=10)
    new = build_case(PlaneRuntime, seed, workers, payloads=True, churn=10)
    assert_agree(ref, new)
    assert any(pay for *_rest, pay in ref.delivered)
    for rt in new.runtimes:
        assert isinstance(rt, PlaneRuntime)
        assert not rt._payloads  # every payload left with its frame


def assert_agree(ref: Run, new: Run) -> None:
    """Both implementations' books, deliveries and hop records are the same."""
    ref.run()
    new.run()
    ref_books, new_books = ref.books(), new.books()
    assert new_books == ref_books
    assert sum(ref_books["delivered"].values()) > 0
    # conservation: offered = delivered + dropped (+ held, none after the run)
    assert ref_books["held"] == 0
    assert sum(ref_books["offered"].values()) == (sum(ref_books["delivered"].values())
                                                  + sum(ref_books["dropped"].values()))
    assert len(new.delivered) == len(ref.delivered)
    for (rid, rat, rhops, rpay), (nid, nat, nhops, npay) in zip(sorted(ref.delivered),
                                                                sorted(new.delivered),
                                                                strict=True):
        assert (nid, nhops, npay) == (rid, rhops, rpay)
        assert math.isclose(nat, rat, rel_tol=0.0, abs_tol=ONE_NANOSECOND_S)
    assert new.hop_records() == ref.hop_records()


def test_the_cases_meet_what_they_claim_to() -> None:
    """The random cases do overflow queues, lose frames to faults and cross workers."""
    totals: Counter[str] = Counter()
    for seed in range(12):
        run = build_case(NodeRuntime, seed, 2)
        run.run()
        books = run.books()
        for (_flow, reason), count in books["dropped"].items():
            totals[reason] += count
        # remote_out below is read after books() had every runtime's counters folded in
        totals["remote"] += sum(fs.remote_out for rt in run.runtimes
                                for fs in rt.stats.flows.values())
    assert totals["queue"] > 0 and totals["fault"] > 0 and totals["remote"] > 0
    assert totals["link_lost"] + totals["link_down"] + totals["no_route"] > 0


def test_loss_is_drawn_at_the_configured_rate() -> None:
    loss = 0.1
    ref = build_case(NodeRuntime, 101, 2, loss=loss, frames=1500)
    new = build_case(PlaneRuntime, 101, 2, loss=loss, frames=1500)
    ref.run()
    new.run()
    for run in (ref, new):
        books = run.books()
        dropped: Counter[str] = Counter()
        for (_f, reason), c in books["dropped"].items():
            dropped[reason] += c
        lost = dropped["loss"]
        # a transmit past the queue check draws once: it is lost, or it arrives (a hop), or
        # its link goes while it is on it
        attempts = lost + sum(run.hop_records().values()) + dropped["link_lost"]
        sd = math.sqrt(attempts * loss * (1 - loss))
        assert abs(lost - attempts * loss) < 4 * sd, (lost, attempts)
        assert sum(books["offered"].values()) == (sum(books["delivered"].values())
                                                  + sum(books["dropped"].values()))
