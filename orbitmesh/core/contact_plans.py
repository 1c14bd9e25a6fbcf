"""DTN contact plans (ION ``ionrc``, HDTN JSON) built from the link states the emulator uses.

A plan is sampled, not predicted: a :class:`~orbitmesh.core.engine.LinkSource` (the geometry's
:class:`~orbitmesh.core.links.LinkEngine`, or a run's recorded
:class:`~orbitmesh.run.trace.LinkTimeline`) gives the live links at each sample time, so every
link class is in the plan (ISL, GSL, terrestrial fibre) and GSLs already obey antenna and
satellite limits, handover policy, masks and faults — the same assignment the emulator makes.
The state at sample ``t_i`` is taken to hold until ``t_{i+1}`` (that is how the controller
announces ticks), so a link live at samples ``i..j`` becomes one contact ``[t_i, t_{j+1})``,
clipped to the plan's end. Its one-way light time is the largest delay seen over the contact.

Times are whole seconds: the plan epoch is the requested start (truncated to the second); a
contact's start is rounded up and its end down, and contacts shorter than a second once rounded
are left out. ION and HDTN both count light time in whole seconds, so ``owlt = ceil(delay)``
(every LEO hop is 1 s; 0 only for a zero-length link).

Node numbers (:func:`node_numbers`) are derived from node ids, not from scenario order: editing
a scenario never renumbers the nodes it already had, except in the rare collision described
there.

Array axes: ``(C,)`` = contacts (undirected, ``a < b`` node indices).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.engine import WARM_UP_S, LinkSource
from orbitmesh.core.faults import Fault, FaultOverlay, active_at
from orbitmesh.core.links import LinkEngine, LinkState
from orbitmesh.core.topology import KIND_NAMES, LINK_CLASSES, IntArray, Topology
from orbitmesh.errors import ScenarioError

FloatArray = NDArray[np.float64]

NODE_NUMBER_LIMIT = 2**31 - 1
"""Node numbers lie in ``[1, NODE_NUMBER_LIMIT)``: valid ``ipn`` node numbers that also fit a
signed 32-bit integer, which some DTN simulators use."""


def _hashed(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "big") % (NODE_NUMBER_LIMIT - 1)


def node_numbers(node_ids: Iterable[str]) -> dict[str, int]:
    """Stable DTN node numbers: ``1 + BLAKE2b-64(node id) mod (2^31 - 2)``.

    On a collision (about 1 in 1,000 for a 2,000-node scenario) the ids that collide are taken
    in sorted order; the first keeps the number, each next one re-hashes ``"<id>#1"``,
    ``"<id>#2"``, ... until a free number comes up. The result depends on the set of ids only,
    never on their order; adding a node renumbers another one only if the two collide.
    """
    ids = sorted(set(node_ids))
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for node_id in ids:
        number, probe = _hashed(node_id), 0
        while number in taken:
            probe += 1
            number = _hashed(f"{node_id}#{probe}")
        taken[number] = node_id
        out[node_id] = number
    return out


def write_node_map(topology: Topology, numbers: dict[str, int], fh: IO[str]) -> None:
    """CSV ``node_id,number,kind`` (kind: satellite, station, ops_centre), in node order."""
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["node_id", "number", "kind"])
    for node_id, kind in zip(topology.node_ids, topology.kind.tolist(), strict=True):
        writer.writerow([node_id, numbers[node_id], KIND_NAMES[kind]])


@dataclass(frozen=True)
class ContactPlan:
    """Undirected contacts between node indices, in whole seconds after ``epoch``."""

    epoch: datetime  # whole second, UTC
    topology: Topology
    a: IntArray  # (C,) lower node index
    b: IntArray  # (C,) higher node index
    kind: NDArray[np.int8]  # (C,) ISL / GSL / TERRESTRIAL
    start_s: IntArray  # (C,) seconds after epoch
    end_s: IntArray  # (C,) seconds after epoch, > start_s
    delay_s: FloatArray  # (C,) largest one-way delay over the contact

    def __len__(self) -> int:
        return int(self.a.shape[0])

    @property
    def owlt_s(self) -> IntArray:
        """One-way light time rounded up to whole seconds, as ION and HDTN count it."""
        return np.ceil(self.delay_s - 1e-12).astype(np.int64)

    def rate_bps(self) -> FloatArray:
        """Each contact's data rate: the scenario's rate for its link class."""
        rules = self.topology.scenario.links
        by_class = np.array([rules.isl.rate_bps, rules.gsl.rate_bps, rules.terrestrial.rate_bps])
        return np.asarray(by_class[self.kind], dtype=np.float64)

    def counts(self) -> dict[str, int]:
        """Contacts per link class name."""
        return {name: int(np.count_nonzero(self.kind == k)) for k, name in enumerate(LINK_CLASSES)}


def sample_times(start_s: float, end_s: float, step_s: float) -> FloatArray:
    """Sample times ``start_s, start_s + step_s, ...`` strictly before ``end_s``."""
    if not step_s > 0:
        raise ScenarioError(f"contact plan: step {step_s} s must be positive")
    if not end_s > start_s:
        raise ScenarioError(f"contact plan: end {end_s} s is not after start {start_s} s")
    count = math.ceil((end_s - start_s) / step_s - 1e-9)
    return np.asarray(start_s + np.arange(count) * step_s, dtype=np.float64)


def link_states(topology: Topology, times_s: FloatArray, *, source: LinkSource | None = None,
                faults: Sequence[Fault] = ()) -> Iterator[LinkState]:
    """Link states at ``times_s`` as the controller computes them (no routing).

    Without ``source`` the geometry is used, GSL history is replayed first (sticky handover
    needs it) and ``faults`` in force are applied as :meth:`TickEngine.step` applies them. A
    recorded timeline already holds its faults, so none are applied to it.
    """
    links = source or LinkEngine(topology)
    overlay = FaultOverlay(topology)
    if source is None and len(times_s):
        tick_s = topology.scenario.tick_s
        t = tick_s * math.floor(max(0.0, float(times_s[0]) - WARM_UP_S) / tick_s)
        while t < times_s[0] - 1e-9:
            links.state_at(t)
            t += tick_s
    for t_s in times_s.tolist():
        active = active_at(faults, t_s) if source is None else []
        if not active:
            yield links.state_at(t_s)
            continue
        failed = overlay.failed_nodes(active, None)
        raw = (links.state_at(t_s, failed=failed) if isinstance(links, LinkEngine)
               else links.state_at(t_s))
        yield overlay.apply(raw, active, None).state


def merge_contacts(states: Iterable[LinkState], times_s: FloatArray, end_s: float,
                   topology: Topology, epoch: datetime,
                   on_sample: Callable[[int], None] | None = None) -> ContactPlan:
    """Merge consecutive samples of each link into contacts (``epoch`` = scenario time 0).

    ``states[i]`` is the state at ``times_s[i]``; it holds until the next sample (or ``end_s``).
    """
    n = topology.n_nodes
    epoch = epoch.astimezone(UTC)
    ref = (epoch + timedelta(seconds=float(times_s[0]))).replace(microsecond=0)
    edges_s = np.append(times_s, end_s) - (ref - epoch).total_seconds()  # seconds after ref
    done: list[tuple[IntArray, IntArray, IntArray, FloatArray, NDArray[np.int8]]] = []
    key = np.empty(0, np.int64)
    first = np.empty(0, np.int64)
    delay = np.empty(0)
    kind = np.empty(0, np.int8)
    count = 0
    for i, state in enumerate(states):
        new_key = state.key
        if len(key):
            pos = np.minimum(np.searchsorted(key, new_key), len(key) - 1)
            cont = key[pos] == new_key
            new_first = np.where(cont, first[pos], i)
            new_delay = np.where(cont, np.maximum(delay[pos], state.delay_s), state.delay_s)
            gone = ~np.isin(key, new_key, assume_unique=True)
            done.append((key[gone], first[gone], np.full(int(gone.sum()), i), delay[gone],
                         kind[gone]))
        else:
            new_first = np.full(len(new_key), i, dtype=np.int64)
            new_delay = state.delay_s
        key, first, delay, kind = new_key, new_first, new_delay, state.kind
        count = i + 1
        if on_sample is not None:
            on_sample(i)
    if count != len(times_s):
        raise ScenarioError(f"contact plan: {count} link states for {len(times_s)} sample times")
    done.append((key, first, np.full(len(key), count), delay, kind))
    k, f, last, d, c = (np.concatenate([part[j] for part in done]) for j in range(5))
    start_s = np.ceil(edges_s[f] - 1e-9).astype(np.int64)
    stop_s = np.floor(edges_s[last] + 1e-9).astype(np.int64)
    keep = stop_s > start_s
    order = np.lexsort((k[keep], start_s[keep]))
    k = k[keep][order]
    return ContactPlan(ref, topology, k // n, k % n, c[keep][order].astype(np.int8),
                       start_s[keep][order], stop_s[keep][order],
                       np.asarray(d[keep][order], dtype=np.float64))


def build_plan(topology: Topology, start: datetime, end: datetime, *, step_s: float | None = None,
               source: LinkSource | None = None, faults: Sequence[Fault] = (),
               on_sample: Callable[[int], None] | None = None) -> ContactPlan:
    """The contact plan of ``[start, end)``, sampled every ``step_s`` (default: the tick)."""
    epoch = topology.scenario.epoch.astimezone(UTC)
    start_s = (start.astimezone(UTC) - epoch).total_seconds()
    end_s = (end.astimezone(UTC) - epoch).total_seconds()
    if start_s < 0:
        raise ScenarioError(f"contact plan: start {start.isoformat()} precedes the scenario "
                            f"epoch {epoch.isoformat()}")
    times_s = sample_times(start_s, end_s, step_s or topology.scenario.tick_s)
    states = link_states(topology, times_s, source=source, faults=faults)
    return merge_contacts(states, times_s, end_s, topology, epoch, on_sample)


# --------------------------------------------------------------------------- writers

def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _header(plan: ContactPlan) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in plan.counts().items())
    return (f"orbitmesh contact plan of scenario {plan.topology.scenario.name!r}: {len(plan)} "
            f"links in contact ({counts}), two one-way contacts each")


def _numbers(plan: ContactPlan, numbers: dict[str, int]) -> IntArray:
    ids = plan.topology.node_ids
    missing = [n for n in ids if n not in numbers]
    if missing:
        raise ScenarioError("contact plan: these nodes have no node number",
                            [f"no node number for {n!r}" for n in missing[:20]])
    return np.array([numbers[n] for n in ids], dtype=np.int64)


def iter_ion(plan: ContactPlan, numbers: dict[str, int]) -> Iterator[str]:
    """ION ``ionrc`` lines: per contact two ``a contact`` lines and one ``a range`` line.

    Times are ``+seconds`` after the ``@`` reference line (the plan epoch, also given in ISO
    form in a comment). Rates are bytes per second, as ``a contact`` takes them. A range is
    written lower node number first, which ION reads as the same light time both ways.
    """
    num = _numbers(plan, numbers)
    yield f"# {_header(plan)}"
    yield (f"# epoch: relative times are seconds after {_iso(plan.epoch)} (UTC); node numbers: "
           "see the node map (orbitmesh contacts --node-map)")
    yield f"@ {plan.epoch:%Y/%m/%d-%H:%M:%S}"
    rate = np.maximum(1, np.rint(plan.rate_bps() / 8.0)).astype(np.int64).tolist()
    na, nb = num[plan.a].tolist(), num[plan.b].tolist()
    rows = zip(plan.start_s.tolist(), plan.end_s.tolist(), na, nb, rate, plan.owlt_s.tolist(),
               strict=True)
    for t0, t1, x, y, r, owlt in rows:
        yield f"a contact +{t0} +{t1} {x} {y} {r}"
        yield f"a contact +{t0} +{t1} {y} {x} {r}"
        yield f"a range +{t0} +{t1} {min(x, y)} {max(x, y)} {owlt}"


def write_ion(plan: ContactPlan, numbers: dict[str, int], fh: IO[str]) -> None:
    """Write :func:`iter_ion` to a text stream."""
    for line in iter_ion(plan, numbers):
        fh.write(line + "\n")


def to_hdtn(plan: ContactPlan, numbers: dict[str, int]) -> dict[str, Any]:
    """HDTN contact-plan JSON with **absolute** times: Unix seconds (UTC, no leap seconds).

    That is the form HDTN's router and scheduler read when started with
    ``--use-unix-timestamp``; ``rateBitsPerSec`` is bits per second, ``owlt`` whole seconds.
    """
    num = _numbers(plan, numbers)
    base = int(plan.epoch.timestamp())
    rate = np.maximum(1, np.rint(plan.rate_bps())).astype(np.int64).tolist()
    out: list[dict[str, int]] = []
    rows = zip(plan.start_s.tolist(), plan.end_s.tolist(), num[plan.a].tolist(),
               num[plan.b].tolist(), rate, plan.owlt_s.tolist(), strict=True)
    for t0, t1, x, y, r, owlt in rows:
        for src, dst in ((x, y), (y, x)):
            out.append({"contact": len(out), "source": src, "dest": dst, "startTime": base + t0,
                        "endTime": base + t1, "rateBitsPerSec": r, "owlt": owlt})
    return {"contacts": out}


def write_hdtn(plan: ContactPlan, numbers: dict[str, int], fh: IO[str]) -> None:
    """Write :func:`to_hdtn` as JSON, one contact per line (diff-friendly)."""
    contacts = to_hdtn(plan, numbers)["contacts"]
    fh.write('{"contacts": [\n')
    for i, c in enumerate(contacts):
        fh.write("  " + json.dumps(c) + (",\n" if i + 1 < len(contacts) else "\n"))
    fh.write("]}\n")

