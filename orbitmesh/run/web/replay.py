"""`orbitmesh watch RUN --replay`: a finished run played back on the same page, with a slider.

Frames come from the run directory's trace, not from a second model of the run: links from
``links.msgpack`` (the timeline the controller recorded), routes recomputed from those links by
the core router (``TickEngine.finish``, the code the controller ran), faults from the trace
manifest, per-flow delivery and latency from the frame events (``events-*.msgpack``), binned by
tick. Each frame goes through the state codec the workers read (``encode_state`` ->
``decode_state``) and then through :class:`RunView`, so the page sees what it sees live.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

from orbitmesh.core.engine import TickEngine
from orbitmesh.errors import RunError
from orbitmesh.protocol.clock import RunClock
from orbitmesh.protocol.messages import (
    FaultInfo,
    FaultListing,
    FlowProgress,
    WorkerProgress,
    WorkerStatus,
)
from orbitmesh.protocol.state import decode_state, encode_state
from orbitmesh.run.fidelity import verdict_line
from orbitmesh.run.trace import LinkTimeline, iter_events, read_manifest
from orbitmesh.run.web.live import LiveOptions, scenario_of
from orbitmesh.run.web.server import WebServer, parse_listen
from orbitmesh.run.web.view import RunView, static_meta


def _fault_listing(faults: list[dict[str, Any]], t_s: float) -> FaultListing:
    infos = []
    for f in faults:
        start = float(f.get("start_s") or 0.0)
        end = f.get("end_s")
        active = start <= t_s and (end is None or t_s < float(end))
        target = tuple(sorted((k, v) for k, v in (f.get("target") or {}).items()
                              if isinstance(v, str | int | float | bool)))
        infos.append(FaultInfo(str(f["id"]), str(f["kind"]), str(f.get("origin", "plan")),
                               start, None if end is None else float(end), active, target))
    return FaultListing(t_s, tuple(infos))


def _run_verdict(run_dir: Path) -> dict[str, Any] | None:
    """The finished run's own fidelity verdict (summary.json), shown instead of live lateness."""
    try:
        fidelity = json.loads((run_dir / "summary.json").read_text())["fidelity"]
        return {"ok": bool(fidelity["ok"]), "text": "run verdict: " + verdict_line(fidelity)}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an interrupted run without a summary: the page says nothing about it


class Replay:
    """Every tick's frame of a finished run, computed once (see the module docstring)."""

    def __init__(self, run_dir: Path, *, quiet: bool = False) -> None:
        self.run_dir = run_dir
        manifest = read_manifest(run_dir)
        self.view = RunView.from_scenario(scenario_of(run_dir), str(manifest["run_id"]))
        topology = self.view.topology
        clock = RunClock.of(manifest)
        duration_s, tick_s = float(manifest["duration_s"]), float(manifest["tick_s"])
        self.times_s = [k * tick_s for k in range(math.floor(duration_s / tick_s) + 1)]
        counts, latency_ms = self._bin_events(run_dir, clock, tick_s, len(self.times_s))
        timeline = LinkTimeline(run_dir, topology)
        engine = TickEngine(topology, link_source=timeline)
        faults = list(manifest.get("faults") or [])
        verdict = _run_verdict(run_dir)
        self.frames: list[bytes] = []
        cumulative = np.zeros((counts.shape[0], 3), dtype=np.int64)
        latency = np.zeros(counts.shape[0], dtype=np.float64)
        for k, t_s in enumerate(self.times_s):
            tick = engine.finish(timeline.state_at(t_s))
            self.view.snapshot = decode_state(encode_state(k, tick.state, tick.routes),
                                              topology.n_nodes)
            self.view.faults = _fault_listing(faults, t_s)
            self.view.handovers += timeline.last_handovers
            cumulative += counts[:, k]
            latency += latency_ms[:, k]
            flows = tuple(FlowProgress(i, int(cumulative[i, 0]), int(cumulative[i, 1]),
                                       (("all", int(cumulative[i, 2])),) if cumulative[i, 2]
                                       else (), float(latency[i]))
                          for i in range(len(cumulative)))
            self.view.workers = {0: WorkerStatus(0, "running", progress=WorkerProgress(
                flows=flows))}
            self.view._sample_history()
            frame = self.view.frame()
            if verdict is not None:
                frame["fidelity"] = verdict
            self.frames.append(json.dumps(frame, separators=(",", ":"),
                                          allow_nan=False).encode())
        if not quiet:
            print(f"replay: {len(self.frames)} ticks of {manifest['run_id']} "
                  f"(0..{self.times_s[-1]:g} s)", file=sys.stderr, flush=True)

    def _bin_events(self, run_dir: Path, clock: RunClock, tick_s: float,
                    ticks: int) -> tuple[np.ndarray, np.ndarray]:
        """Per user flow and tick: offered, delivered, dropped counts; latency sums (ms)."""
        flows = len(self.view.topology.scenario.traffic)
        counts = np.zeros((flows, ticks, 3), dtype=np.int64)
        latency = np.zeros((flows, ticks), dtype=np.float64)
        column = {"offer": 0, "deliver": 1, "drop": 2}
        for record in iter_events(run_dir):
            what = record[0]
            if what not in column:
                continue
            flow = int(record[3])
            if not 0 <= flow < flows:
                continue  # telemetry and telecommands have no sparkline
            k = min(ticks - 1, max(0, int(clock.scenario_s(float(record[1])) / tick_s)))
            counts[flow, k, column[what]] += 1
            if what == "deliver":
                latency[flow, k] += float(record[6])
        return counts, latency

    def frame_at(self, t_s: float) -> bytes:
        """The frame of the last tick at or before ``t_s``."""
        k = max(0, bisect.bisect_right(self.times_s, t_s + 1e-9) - 1)
        return self.frames[k]

    def meta(self) -> dict[str, Any]:
        """Static metadata, with the replay's time span."""
        meta = static_meta(self.view.topology, self.view.run_id, control=False, replay=True)
        meta["end_s"] = self.times_s[-1]
        return meta


async def serve_replay(run_dir: Path, options: LiveOptions) -> None:
    """Serve the replay page until Ctrl-C."""
    if not (run_dir / "links.msgpack").is_file():
        raise RunError(f"{run_dir}: no links.msgpack; --replay needs a finished run directory")
    replay = await asyncio.to_thread(Replay, run_dir)
    host, port = parse_listen(options.web)

    def frame(query: dict[str, list[str]]) -> bytes:
        try:
            t_s = float(query.get("t", ["0"])[0])
        except ValueError:
            t_s = 0.0
        return replay.frame_at(t_s)

    async with WebServer(host, port, meta=replay.meta, frame=frame) as web:
        print(f"web: {web.url}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
