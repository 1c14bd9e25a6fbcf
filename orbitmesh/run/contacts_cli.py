"""`orbitmesh contacts`: pass tables and DTN contact plans, written as they are found.

Progress goes to standard error through rich, and only when standard error is a terminal, so
pipes and CI logs stay clean.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO

from orbitmesh.core.topology import Topology
from orbitmesh.errors import ScenarioError

_FORK_FROM_SAMPLES = 1_000_000
"""Satellite-samples (about a second of SGP4) from which the search forks its workers: below,
each worker's start (numba, ~1 s of CPU apiece) costs more than it saves."""


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A callback that reports ``done`` out of ``total``; silent unless stderr is a TTY.

    The bar (and rich's refresh thread) starts at the first report, not before: the pass search
    forks its workers when it starts, and a process should not fork while another of its
    threads may hold the lock of standard error.
    """
    if not sys.stderr.isatty():
        yield lambda _done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    started = False

    def report(done: int) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        bar.update(task, completed=done)

    try:
        yield report
    finally:
        if started:
            bar.stop()


def _span(topology: Topology, args: argparse.Namespace, default_s: float
          ) -> tuple[timedelta, timedelta]:
    epoch = topology.scenario.epoch
    start = args.start or epoch
    end = args.end or start + timedelta(seconds=default_s)
    if end <= start:
        raise ScenarioError("--end must be after --start")
    return start - epoch, end - epoch


def write_passes(topology: Topology, args: argparse.Namespace, out: IO[str], *,
                 workers: int | None = None, on_rows: Callable[[int], None] | None = None,
                 sgp4_step_s: float | None = None) -> int:
    """The pass table (``table``) or JSON array (``json``, one pass per line), written as the
    search finds the passes; returns how many. ``workers`` processes scan (0: this one; None:
    two for a search big enough to repay their start); ``sgp4_step_s`` as in
    :func:`orbitmesh.core.passes.iter_pass_tables` (None: SGP4 at every grid sample)."""
    from orbitmesh.core.geometry import Propagator, Stations
    from orbitmesh.core.pass_table import table_header, table_widths
    from orbitmesh.core.passes import iter_pass_tables, search_chunks
    from orbitmesh.run.pass_workers import forked_runner

    scenario = topology.scenario
    t0, t1 = _span(topology, args, scenario.duration_s)
    start, end = scenario.epoch + t0, scenario.epoch + t1
    stations = list(range(topology.n_stations))
    if args.station:
        names = [g.name for g in scenario.stations]
        for name in args.station:
            if name not in names:
                raise ScenarioError(f"unknown station {name!r}; expected one of {names}")
        stations = [names.index(n) for n in args.station]
    sats = list(range(topology.n_satellites))
    if args.satellite:
        sats = [topology.node(s) for s in args.satellite]
        if any(i >= topology.n_satellites for i in sats):
            raise ScenarioError("--satellite takes satellite ids (see `orbitmesh validate`)")
    st = scenario.stations
    satrecs = [topology.satrecs[i] for i in sats]
    sat_ids = [topology.node_ids[i] for i in sats]
    station_ids = [st[g].name for g in stations]
    # An hour of 30 s samples a chunk: small enough that the first rows come early and that
    # the workers and this process overlap well, large enough that the sparse propagation's
    # one SGP4 call per satellite and chunk (~6 us each) stays small (half an hour cost
    # ~0.4 s more CPU on shell 1 over a day). A worker holds one chunk (a few satellites x
    # samples x 3 arrays, ~5 MB each at 1,584 satellites); its memory is mostly numba.
    chunk_samples = 128
    if sgp4_step_s is None:
        sgp4_step_s = getattr(args, "sgp4_step", None)
    if sgp4_step_s is not None and sgp4_step_s not in (30.0, 60.0):
        raise ScenarioError(f"--sgp4-step {sgp4_step_s:g}: expected 60 (SGP4 every other step "
                            "of the 30 s search grid) or 30 (every step, the default)")
    total = search_chunks(start, end, len(sats), chunk_samples=chunk_samples)
    if workers is None:
        workers = 2 if len(sats) * total * chunk_samples >= _FORK_FROM_SAMPLES else 0
    written = 0
    with _progress("searching passes", total) as report:
        tables = iter_pass_tables(
            Propagator(satrecs), sat_ids,
            Stations.from_geodetic([st[g].lat_deg for g in stations],
                                   [st[g].lon_deg for g in stations],
                                   [st[g].alt_m / 1000.0 for g in stations]),
            station_ids, [st[g].min_elevation_deg for g in stations], start, end,
            runner=forked_runner(workers),
            chunk_samples=chunk_samples, sgp4_step_s=sgp4_step_s)
        if args.format == "table":
            widths = table_widths(station_ids, sat_ids, (end - start).total_seconds())
            out.write(table_header(widths))
        else:
            out.write("[")
        for i, table in enumerate(tables):
            if len(table):
                if args.format == "table":
                    out.write("".join(table.table_rows(widths)))
                else:
                    out.write(("\n  " if written == 0 else ",\n  ") + table.json_text())
                written += len(table)
                out.flush()  # each chunk is final: let a reader start on it
                if on_rows is not None:
                    on_rows(written)
            report(i + 1)
        if args.format == "json":
            out.write("\n]\n" if written else "]\n")
    return written


def write_plan(topology: Topology, args: argparse.Namespace, out: IO[str]) -> None:
    """An ION ``ionrc`` or HDTN JSON contact plan, and the node map if asked."""
    from orbitmesh.core.contact_plans import (
        build_plan,
        node_numbers,
        sample_times,
        write_hdtn,
        write_ion,
        write_node_map,
    )
    from orbitmesh.core.engine import LinkSource
    from orbitmesh.core.faults import Fault, random_faults, scheduled_faults

    if getattr(args, "sgp4_step", None) is not None:
        raise ScenarioError("--sgp4-step applies to passes (--format table or json); a contact "
                            "plan samples the emulator's own link states")
    scenario = topology.scenario
    source: LinkSource | None = None
    faults: list[Fault] = []
    default_s = scenario.duration_s
    if args.from_run:
        from orbitmesh.run.trace import LinkTimeline, read_manifest

        manifest = read_manifest(Path(args.from_run))
        default_s = float(manifest.get("duration_s") or default_s)
        source = LinkTimeline(Path(args.from_run), topology)
    else:
        # The controller's fault timeline: scheduled faults plus the seeded random ones.
        faults = scheduled_faults(scenario) + random_faults(topology, scenario.duration_s)
    t0, t1 = _span(topology, args, default_s)
    if args.step is not None and not args.step > 0:
        raise ScenarioError(f"--step {args.step}: expected a positive number of seconds")
    step_s = args.step or scenario.tick_s
    total = len(sample_times(t0.total_seconds(), t1.total_seconds(), step_s))
    with _progress("sampling links", total) as report:
        plan = build_plan(topology, scenario.epoch + t0, scenario.epoch + t1, step_s=step_s,
                          source=source, faults=faults, on_sample=lambda i: report(i + 1))
    numbers = node_numbers(topology.node_ids)
    if args.node_map:
        with open(args.node_map, "w", encoding="utf-8", newline="") as fh:
            write_node_map(topology, numbers, fh)
    (write_ion if args.format == "ion" else write_hdtn)(plan, numbers, out)
