"""The figures of `orbitmesh report`, drawn with matplotlib (Agg: no display, no window).

Each ``fig_*`` function takes a :class:`RunData` and returns a matplotlib Figure; :data:`FIGURES`
lists them in page order with a stable id (used as the HTML anchor and the PNG file name).
Scatter plots of more than ``MAX_POINTS`` frames are thinned evenly and say so in the title.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from orbitmesh.core.topology import LINK_CLASSES
from orbitmesh.run.report_data import (
    ACK_FLOW,
    TELECOMMAND_FLOW,
    TELEMETRY_FLOW,
    FloatArray,
    RunData,
    delivered_by_offer_time,
    tc_round_trips,
    time_bins,
)

MAX_POINTS = 50_000
"""Most points one scatter series draws (more would only slow the page, not inform)."""
FAULT_COLOUR = "#d62728"


def _figure(rows: int = 1, height: float = 3.2) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(rows, 1, figsize=(10, height * rows), sharex=True, squeeze=False)
    return fig, axes[:, 0]


def _thin(mask: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], bool]:
    idx = np.flatnonzero(mask)
    if len(idx) <= MAX_POINTS:
        return idx, False
    return idx[np.linspace(0, len(idx) - 1, MAX_POINTS).astype(np.int64)], True


def _faults(ax: Any, data: RunData, label: bool = True) -> None:
    """Shade every fault window (a fault without an end lasts to the end of the run)."""
    for i, f in enumerate(data.faults):
        end = f.get("end_s")
        end = data.duration_s if end is None else min(float(end), data.duration_s)
        ax.axvspan(float(f["start_s"]), end, color=FAULT_COLOUR, alpha=0.12,
                   label="fault window" if label and i == 0 else None)


def _route_changes(ax: Any, data: RunData) -> None:
    """Mark ticks whose routes changed as short ticks along the bottom of the axes."""
    t = data.tick_t_s[data.route_changes > 0]
    if len(t):
        ax.plot(t, np.zeros_like(t), "|", color="black", markersize=12,
                transform=ax.get_xaxis_transform(), label="route change (any flow)")


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _finish(fig: Figure, axes: Any, title: str) -> Figure:
    axes[-1].set_xlabel("scenario time (s)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fig_latency(data: RunData) -> Figure:
    """One-way latency of every delivered frame, per traffic flow."""
    fig, axes = _figure()
    ax = axes[0]
    thinned = False
    for flow in data.user_flows:
        idx, t = _thin(data.deliver_flow == flow)
        thinned |= t
        ax.plot(data.deliver_t_s[idx], data.deliver_latency_ms[idx], ".", markersize=2,
                label=data.flows[flow])
    if not data.user_flows or not np.isin(data.deliver_flow, data.user_flows).any():
        _empty(ax, "no traffic flow delivered a frame")
    _faults(ax, data)
    _route_changes(ax, data)
    ax.set_ylabel("latency (ms)")
    return _finish(fig, axes, "Latency per flow" + (" (thinned)" if thinned else ""))


def _rate(t: FloatArray, edges: FloatArray) -> FloatArray:
    return np.histogram(t, edges)[0].astype(np.float64)


def fig_delivery(data: RunData) -> Figure:
    """Share of the frames offered in each bin that were delivered, per flow; drops by reason."""
    fig, axes = _figure(2)
    edges = time_bins(data)
    mid = (edges[:-1] + edges[1:]) / 2
    shown = [*data.user_flows, TELEMETRY_FLOW] if data.user_flows else [TELEMETRY_FLOW]
    for flow in shown:
        offered, delivered = delivered_by_offer_time(data, flow, edges)
        if offered.sum() == 0:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(offered > 0, delivered / offered, np.nan)
        axes[0].step(mid, ratio, where="mid", label=data.flows.get(flow, str(flow)))
    axes[0].set_ylabel("delivered / offered\n(by offer time)")
    bottom = np.zeros(len(mid))
    width = float(edges[1] - edges[0]) if len(edges) > 1 else 1.0
    for k, reason in enumerate(data.reasons):
        counts = _rate(data.drop_t_s[data.drop_reason == k], edges)
        axes[1].bar(mid, counts, width=width, bottom=bottom, label=reason)
        bottom += counts
    if not data.reasons:
        _empty(axes[1], "no frame was dropped")
    axes[1].set_ylabel(f"drops per {width:g} s")
    for ax in axes:
        _faults(ax, data, ax is axes[0])
    return _finish(fig, axes, "Delivery ratio and drops by reason")


def fig_links(data: RunData) -> Figure:
    """Links up per class, handovers and route changes, per recorded tick."""
    fig, axes = _figure(3, 2.4)
    if not len(data.tick_t_s):
        _empty(axes[0], "no link timeline in this run")
    for name in LINK_CLASSES:
        if data.links_up[name].any():
            axes[0].step(data.tick_t_s, data.links_up[name], where="post", label=name)
    axes[0].set_ylabel("links up")
    axes[1].step(data.tick_t_s, data.handovers, where="post", color="tab:purple")
    axes[1].set_ylabel("handovers")
    axes[2].step(data.tick_t_s, data.route_changes, where="post", color="tab:brown")
    axes[2].set_ylabel("route changes")
    for ax in axes:
        _faults(ax, data, ax is axes[0])
    return _finish(fig, axes, "Links, handovers and route changes per tick")


def fig_telemetry(data: RunData) -> Figure:
    """Telemetry age at delivery, and telemetry not yet delivered (on board or in flight)."""
    fig, axes = _figure(2)
    idx, thinned = _thin(data.deliver_flow == TELEMETRY_FLOW)
    axes[0].plot(data.deliver_t_s[idx], data.deliver_latency_ms[idx] / 1000.0, ".",
                 markersize=2, color="tab:green")
    if not len(idx):
        _empty(axes[0], "no telemetry was delivered")
    axes[0].set_ylabel("age at delivery (s)")
    # Undelivered = generated - delivered - dropped, counted as the events happen.
    t = np.concatenate([data.offer_t_s[data.offer_flow == TELEMETRY_FLOW],
                        data.deliver_t_s[data.deliver_flow == TELEMETRY_FLOW],
                        data.drop_t_s[data.drop_flow == TELEMETRY_FLOW]])
    n_off = int(np.count_nonzero(data.offer_flow == TELEMETRY_FLOW))
    step = np.concatenate([np.ones(n_off), -np.ones(len(t) - n_off)])
    order = np.argsort(t, kind="stable")
    axes[1].step(t[order], np.cumsum(step[order]), where="post", color="tab:olive")
    axes[1].set_ylabel("undelivered frames\n(on board + in flight)")
    backlog = (data.summary.get("telemetry") or {}).get("max_backlog")
    if backlog is not None:
        axes[1].axhline(backlog, ls=":", color="grey", label=f"max on-board backlog {backlog}")
    for ax in axes:
        _faults(ax, data, ax is axes[0])
    return _finish(fig, axes, "Telemetry age and backlog" + (" (thinned)" if thinned else ""))


def fig_telecommands(data: RunData) -> Figure:
    """Telecommand uplink and acknowledgement latency over time; round-trip distribution."""
    fig = plt.figure(figsize=(10, 3.4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for flow, colour in ((TELECOMMAND_FLOW, "tab:blue"), (ACK_FLOW, "tab:orange")):
        idx, _ = _thin(data.deliver_flow == flow)
        left.plot(data.deliver_t_s[idx], data.deliver_latency_ms[idx], ".", markersize=3,
                  color=colour, label=data.flows.get(flow, str(flow)))
    _faults(left, data)
    left.set_xlabel("scenario time (s)")
    left.set_ylabel("one-way latency (ms)")
    sent_s, rtt_ms = tc_round_trips(data)
    if len(rtt_ms):  # per telecommand, matched to its acknowledgement in the trace
        right.plot(sent_s, rtt_ms, ".", markersize=3, color="tab:blue")
        _faults(right, data, label=False)
        right.set_xlabel("scenario time the telecommand was sent (s)")
        right.set_ylabel("round trip, TC to ack (ms)")
    elif len(data.tc_rtt_ms):  # an older trace: the workers' samples, without their times
        right.hist(data.tc_rtt_ms, bins=min(50, max(5, len(data.tc_rtt_ms) // 4)),
                   color="tab:blue")
        right.set_xlabel("round trip, TC sent to ack received (ms)")
        right.set_ylabel("telecommands")
    else:
        _empty(right, "no telecommand round trip completed")
    if not np.isin(data.deliver_flow, [TELECOMMAND_FLOW, ACK_FLOW]).any():
        _empty(left, "no telecommand or ack was delivered")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    if left.get_legend_handles_labels()[0]:
        left.legend(loc="upper right", fontsize=8)
    fig.suptitle("Telecommand round trips")
    fig.tight_layout()
    return fig


def fig_excess(data: RunData) -> Figure:
    """How late (scenario ms) each frame was delivered beyond the modelled network."""
    fig, axes = _figure()
    ax = axes[0]
    ok = ~np.isnan(data.deliver_late_ms)
    idx, thinned = _thin(ok)
    ax.plot(data.deliver_t_s[idx], data.deliver_late_ms[idx], ".", markersize=2,
            color="tab:gray", label="delivery excess")
    if not len(idx):
        _empty(ax, "no delivery carries a lateness figure")
    budget = (data.summary.get("fidelity") or {}).get("budget_ms")
    if budget is not None:
        ax.axhline(float(budget), color=FAULT_COLOUR, ls="--", label=f"budget {budget:g} ms")
    _faults(ax, data, label=False)
    ax.set_ylabel("excess (scenario ms)")
    return _finish(fig, axes, "Emulation excess over time" + (" (thinned)" if thinned else ""))


def fig_map(data: RunData) -> Figure:
    """Satellites, ground nodes and live links at the middle of the run (a lon/lat scatter)."""
    from orbitmesh.run.geometry_export import ground_lon_lat_deg, satellite_lon_lat_deg
    from orbitmesh.run.trace import LinkTimeline

    topology, when_s = _scenario_topology(data), data.duration_s / 2.0
    fig = plt.figure(figsize=(10, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    if topology is None:
        _empty(ax, "no readable scenario.yaml in the run directory")
        return fig
    lon, lat = np.empty(0), np.empty(0)
    if topology.n_satellites:
        lon, lat, _ = satellite_lon_lat_deg(topology, np.array([when_s]))
        lon, lat = lon[:, 0], lat[:, 0]
    g_lon, g_lat = ground_lon_lat_deg(topology)
    all_lon = np.concatenate([lon, g_lon])
    all_lat = np.concatenate([lat, g_lat])
    try:
        state = LinkTimeline(data.run_dir, topology).state_at(when_s)
    except Exception as exc:
        from orbitmesh.errors import OrbitmeshError

        if not isinstance(exc, OrbitmeshError):
            raise
        state = None
    if state is not None:
        colours = ("tab:blue", "tab:orange", "tab:green")
        for k, name in enumerate(LINK_CLASSES):
            sel = state.kind == k
            x = np.stack([all_lon[state.a[sel]], all_lon[state.b[sel]]])
            y = np.stack([all_lat[state.a[sel]], all_lat[state.b[sel]]])
            keep = np.abs(x[0] - x[1]) < 180.0  # a link across the antimeridian is not drawn
            if keep.any():
                ax.plot(x[:, keep], y[:, keep], "-", lw=0.6, alpha=0.6, color=colours[k])
                ax.plot([], [], "-", color=colours[k], label=f"{name} ({int(sel.sum())})")
    ax.scatter(lon, lat, s=6, color="black", label=f"satellites ({len(lon)})", zorder=3)
    n_st = topology.n_stations
    ax.scatter(g_lon[:n_st], g_lat[:n_st], s=30, marker="^", color="tab:red",
               label=f"stations ({n_st})", zorder=4)
    if len(g_lon) > n_st:
        ax.scatter(g_lon[n_st:], g_lat[n_st:], s=40, marker="s", color="tab:purple",
                   label=f"ops centres ({len(g_lon) - n_st})", zorder=4)
    coast = _coastlines(ax)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    when = topology.scenario.epoch + timedelta(seconds=when_s)
    ax.set_title(f"Network at t={when_s:g} s ({when:%Y-%m-%d %H:%M:%S} UTC)"
                 + ("" if coast else "; no coastline data found"))
    fig.tight_layout()
    return fig


COASTLINES = Path(__file__).parent / "web" / "static" / "vendor" / "land-110m.json"
"""Natural Earth 1:110m land outline (world-atlas, vendored for the live map; ISC / public
domain): the map snapshot draws it from the package, never from the network."""


def coastline_arcs(path: Path = COASTLINES) -> list[FloatArray]:
    """The outline's arcs as ``(P, 2)`` lon/lat arrays (TopoJSON: quantised, delta-encoded)."""
    topo = json.loads(path.read_text())
    scale = np.asarray(topo["transform"]["scale"], dtype=np.float64)
    shift = np.asarray(topo["transform"]["translate"], dtype=np.float64)
    out = []
    for arc in topo["arcs"]:
        points = np.cumsum(np.asarray(arc, dtype=np.float64), axis=0) * scale + shift
        # Outlines that wrap round the +-180 meridian would be drawn straight across the map.
        cuts = np.flatnonzero(np.abs(np.diff(points[:, 0])) > 180.0) + 1
        out += [part for part in np.split(points, cuts) if len(part) >= 2]
    return out


def _coastlines(ax: Any) -> bool:
    try:
        arcs = coastline_arcs()
    except (OSError, ValueError, KeyError):
        return False
    for arc in arcs:
        ax.plot(arc[:, 0], arc[:, 1], "-", lw=0.6, color="#555555", zorder=2.5)  # over links
    return True


def _scenario_topology(data: RunData) -> Any:
    from orbitmesh.core.scenario import load_scenario
    from orbitmesh.core.topology import build_topology
    from orbitmesh.errors import OrbitmeshError

    path = data.run_dir / str(data.manifest.get("scenario_file") or "scenario.yaml")
    try:
        return build_topology(load_scenario(path))
    except (OrbitmeshError, OSError) as exc:
        data.warnings.append(f"map: cannot load {path}: {exc}")
        return None


FIGURES: tuple[tuple[str, str, Callable[[RunData], Figure]], ...] = (
    ("latency", "Latency per flow (fault windows shaded, route changes marked)", fig_latency),
    ("delivery", "Delivery ratio and drops by reason", fig_delivery),
    ("links", "Links up, handovers and route changes per tick", fig_links),
    ("telemetry", "Telemetry age and on-board backlog", fig_telemetry),
    ("telecommands", "Telecommand round trips", fig_telecommands),
    ("excess", "Emulation excess (scenario ms)", fig_excess),
    ("map", "Map snapshot", fig_map),
)
"""(id, caption, drawing function), in page order."""
