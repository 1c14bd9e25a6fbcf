"""Prometheus / OpenMetrics figures of a live run, read from the same :class:`RunView` as the map.

Built with the official ``prometheus_client`` (its text format and parser are the reference that
Prometheus and Grafana agents read). A custom collector turns the view into metric families at
scrape time, so nothing is counted twice and nothing runs between scrapes. docs/observability.md
lists every metric with its labels.

Every family carries ``run`` (the run id); per-flow families add ``flow``, ``source``,
``destination``; drops add ``reason``; link families ``link_class``; worker families ``worker``.
Times are scenario seconds unless the name says ``wall``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from orbitmesh.protocol.messages import LATENCY_BOUNDS_MS
from orbitmesh.run.web.view import RunView

WORKER_SILENT_S = 3.0
"""A worker whose last heartbeat is older than this (wall s) counts as not up."""
FLOW_LABELS = ("run", "flow", "source", "destination")


class RunCollector(Collector):
    """Metric families of one run, computed from the view at each scrape."""

    def __init__(self, view: RunView, tick_compute_ms: Callable[[], Sequence[float]] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.view = view
        self.tick_compute_ms = tick_compute_ms
        self.wall = wall

    def collect(self) -> Iterator[Metric]:
        """The families (see docs/observability.md)."""
        yield from self._flows()
        yield from self._links()
        yield from self._workers()

    def _flow_labels(self, flow: int) -> list[str]:
        traffic = self.view.topology.scenario.traffic
        src, dst = ((traffic[flow].source, traffic[flow].destination)
                    if 0 <= flow < len(traffic) else ("", ""))
        return [self.view.run_id, self.view.flow_name(flow), src, dst]

    def _flows(self) -> Iterator[Metric]:
        offered = CounterMetricFamily("orbitmesh_flow_offered_frames",
                                      "Frames offered by the flow's source", labels=FLOW_LABELS)
        delivered = CounterMetricFamily("orbitmesh_flow_delivered_frames",
                                        "Frames delivered at the flow's destination",
                                        labels=FLOW_LABELS)
        dropped = CounterMetricFamily("orbitmesh_flow_dropped_frames",
                                      "Frames dropped, by reason", labels=(*FLOW_LABELS, "reason"))
        latency = HistogramMetricFamily(
            "orbitmesh_flow_latency_seconds", "End-to-end latency of delivered frames "
            "(scenario seconds)", labels=FLOW_LABELS)
        for flow, tot in sorted(self.view.flow_totals().items()):
            labels = self._flow_labels(flow)
            offered.add_metric(labels, tot.offered)
            delivered.add_metric(labels, tot.delivered)
            for reason, n in sorted(tot.dropped.items()):
                dropped.add_metric([*labels, reason], n)
            buckets: list[tuple[str, float]] = [
                (f"{bound / 1000.0:g}", float(n))
                for bound, n in zip(LATENCY_BOUNDS_MS, tot.latency_le, strict=True)]
            buckets.append(("+Inf", float(tot.delivered)))
            latency.add_metric(labels, buckets, tot.latency_sum_ms / 1000.0)
        yield from (offered, delivered, dropped, latency)

    def _links(self) -> Iterator[Metric]:
        run = [self.view.run_id]
        up = GaugeMetricFamily("orbitmesh_links_up", "Live links in the tick in force, by class",
                               labels=("run", "link_class"))
        for name, n in self.view.links_up().items():
            up.add_metric([*run, name], n)
        yield up
        handovers = CounterMetricFamily("orbitmesh_handovers", "Ground-link handovers",
                                        labels=("run",))
        handovers.add_metric(run, self.view.handovers)
        routes = CounterMetricFamily("orbitmesh_route_changes", "Routing-table changes",
                                     labels=("run",))
        routes.add_metric(run, self.view.route_changes)
        ticks = CounterMetricFamily("orbitmesh_ticks", "Tick snapshots received",
                                    labels=("run",))
        ticks.add_metric(run, self.view.ticks)
        snap = self.view.snapshot
        t = GaugeMetricFamily("orbitmesh_scenario_time_seconds",
                              "Scenario time of the tick in force", labels=("run",))
        t.add_metric(run, snap.t_s if snap is not None else 0.0)
        active = GaugeMetricFamily("orbitmesh_faults_active", "Faults in force",
                                   labels=("run",))
        active.add_metric(run, sum(f.active for f in self.view.faults.faults))
        yield from (handovers, routes, ticks, t, active)
        if self.tick_compute_ms is not None:
            samples = list(self.tick_compute_ms())
            compute = SummaryMetricFamily(
                "orbitmesh_tick_compute_wall_seconds", "Wall time the controller spent "
                "computing ticks (geometry, links, routes)", labels=("run",))
            compute.add_metric(run, len(samples), sum(samples) / 1000.0)
            yield compute

    def _workers(self) -> Iterator[Metric]:
        labels = ("run", "worker")
        up = GaugeMetricFamily("orbitmesh_worker_up", "1 while the worker heartbeats and is "
                               "not lost", labels=labels)
        age = GaugeMetricFamily("orbitmesh_worker_heartbeat_age_wall_seconds",
                                "Wall seconds since the worker's last status", labels=labels)
        excess = GaugeMetricFamily("orbitmesh_emulation_excess_seconds", "Largest hop "
                                   "lateness since the last heartbeat (scenario s)", labels=labels)
        apply = GaugeMetricFamily("orbitmesh_link_apply_late_seconds", "Largest link-apply "
                                  "lateness since the last heartbeat (scenario s)", labels=labels)
        held = GaugeMetricFamily("orbitmesh_held_on_board_frames", "Frames stored on board "
                                 "waiting for a route", labels=labels)
        now = self.wall()
        for k, status in sorted(self.view.workers.items()):
            lab = [self.view.run_id, str(k)]
            seen = now - self.view.seen_wall.get(k, now)
            alive = status.state in ("ready", "running") and seen <= WORKER_SILENT_S
            up.add_metric(lab, float(alive))
            age.add_metric(lab, seen)
            p = status.progress
            excess.add_metric(lab, (p.late_ms if p else 0.0) / 1000.0)
            apply.add_metric(lab, (p.apply_late_ms if p else 0.0) / 1000.0)
            held.add_metric(lab, p.held_on_board if p else 0)
        yield from (up, age, excess, apply, held)


def registry_for(view: RunView, **kwargs: Any) -> CollectorRegistry:
    """A registry holding only this run's collector (no process metrics of the launcher)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(view, **kwargs))
    return registry


def metrics_text(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
