"""A worker's books on the outside: heartbeats, its retained status and its stats file.

:class:`WorkerBooks` is a mixin of :class:`nodes.worker.Worker`. Every ``HEARTBEAT_S`` the worker
publishes its progress on its retained status topic (the live map, /metrics and the launcher's
warnings read it) and, every ``SNAPSHOT_EVERY`` beats, writes a counters-only snapshot of its
stats file (what survives a SIGKILL); at the end it writes the final document, with the latency
samples, what it still holds and how its drain ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

from nodes.drain import DrainResult
from nodes.endpoints import EndpointHost
from nodes.heartbeat import flow_progress
from nodes.mcs_bridge import McsBridges
from nodes.roles import Roles
from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from orbitmesh.protocol.clock import WallSource
from orbitmesh.protocol.messages import WorkerProgress, WorkerState, WorkerStatus
from orbitmesh.protocol.transport import Transport
from orbitmesh.protocol.wire import F_FLOW, Topics
from orbitmesh.run.files import DiskError, atomic_write

log = logging.getLogger("orbitmesh.worker")
HEARTBEAT_S = 0.5
SNAPSHOT_EVERY = 2
"""Heartbeats between stats snapshots: what survives if this process is killed."""


class WorkerBooks:
    """Mixin: the heartbeat, status publications and stats file of a worker."""

    wall: WallSource
    index: int
    generation: int
    tag: str
    topics: Topics
    transport: Transport
    out_dir: Path | None
    runtime: NodeRuntime
    roles: Roles
    stats: Stats
    started: bool
    drained: dict[int, int]
    endpoints: EndpointHost | None
    mcs: McsBridges | None
    _window_apply_late_ms: float

    def _init_books(self) -> None:
        self._stats_lock = threading.Lock()
        self._stats_final = False
        self.behind_s = 0.0
        """How far behind (wall s) the worker was at its last heartbeat (the drain's limit
        grows with it)."""
        self.drain: DrainResult | None = None

    def now(self) -> float:
        """Wall-clock seconds (the clock every process of a run shares)."""
        return self.wall.now_wall()

    async def _heartbeat(self) -> None:
        beats = 0
        while True:
            self._status("running", self._progress())
            beats += 1
            if beats % SNAPSHOT_EVERY == 0:
                snapshot = self._stats_document(final=False)
                if snapshot is not None:
                    # Off the loop: replacing a file by rename makes ext4 write its data out
                    # at once (auto_da_alloc), which held the loop for milliseconds.
                    await asyncio.to_thread(self._save_stats, *snapshot)
            await asyncio.sleep(HEARTBEAT_S)

    def _progress(self) -> WorkerProgress:
        flows = self.stats.flows.values()
        now = self.now()
        due = self.runtime.next_due
        behind_ms = (self.runtime.clock.scenario_delay(max(0.0, now - due)) * 1000.0
                     if self.started and due is not None else 0.0)
        late_ms = max(self.stats.window_late_ms, behind_ms)
        self.behind_s = late_ms / 1000.0 / self.runtime.speed  # scenario ms -> wall s
        apply_late_ms = self._window_apply_late_ms
        self.stats.window_late_ms = self._window_apply_late_ms = 0.0
        return WorkerProgress(
            offered=sum(f.offered for f in flows), delivered=sum(f.delivered for f in flows),
            dropped=sum(sum(f.dropped.values()) for f in flows), hops=sum(f.hops for f in flows),
            held_on_board=self.stats.held_on_board, malformed=self.stats.malformed_count,
            t_s=round(self.runtime.scenario_s(now), 3) if self.started else None,
            late_ms=round(late_ms, 3), apply_late_ms=round(apply_late_ms, 3),
            flows=flow_progress(self.stats.flows))

    def _status(self, state: WorkerState, progress: WorkerProgress | None = None,
                **extra: int) -> None:
        status = WorkerStatus(self.index, state, self.generation, self.now(),
                              extra.get("pid"), extra.get("nodes"), progress)
        self.transport.publish(self.topics.worker_status(self.index), status.encode(),
                               retain=True)

    def _finish(self) -> None:
        """Count what is still held and write the final stats file."""
        self.stats.close_events()  # a full disk truncates the log there, never raises
        if self.endpoints is not None:
            self.endpoints.close()
        if self.mcs is not None:
            self.mcs.close()
        self._write_stats(final=True)
        self._status("done", self._progress())

    def _write_stats(self, *, final: bool) -> None:
        document = self._stats_document(final=final)
        if document is not None:
            self._save_stats(*document)

    def _save_stats(self, path: Path, text: str, final: bool) -> None:
        # A snapshot still being written on its thread when the run ends must not land after
        # the final document and replace it with older counts.
        with self._stats_lock:
            if self._stats_final and not final:
                return
            try:
                atomic_write(path, text, durable=final)
            except DiskError as exc:  # the summary then sees the last snapshot, not final
                log.error("%s", exc)
            self._stats_final = self._stats_final or final

    def _stats_document(self, *, final: bool) -> tuple[Path, str, bool] | None:
        """Where this worker's stats file goes and what it holds (None without --out)."""
        held: dict[int, int] = {}
        for frame in self.runtime.held_frames():
            held[frame[F_FLOW]] = held.get(frame[F_FLOW], 0) + 1
        for store in self.roles.store.values():
            for frame in store:
                held[frame[F_FLOW]] = held.get(frame[F_FLOW], 0) + 1
        for flow, count in self.drained.items():
            held[flow] = held.get(flow, 0) + count
        # Snapshots (what survives a SIGKILL) carry counters only: serialising every latency
        # sample each second would stall the event loop.
        result = self.stats.as_dict(samples=final)
        result["worker"] = self.index
        result["in_flight"] = {str(k): v for k, v in held.items()}
        result["held_on_board"] = sum(len(s) for s in self.roles.store.values())
        result["generation"] = self.generation
        result["final"] = final
        result["dropped_publishes"] = getattr(self.transport, "dropped_publishes", 0)
        if self.endpoints is not None:
            result["endpoints"] = self.endpoints.as_dict()
        if self.mcs is not None:
            result["mcs"] = self.mcs.as_dict()
        if self.drain is not None:
            result["drain"] = self.drain.as_dict()
        if self.out_dir is None:
            return None
        return self.out_dir / f"stats-{self.tag}.json", json.dumps(result), final


