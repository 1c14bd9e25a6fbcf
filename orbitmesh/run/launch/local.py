"""Run a scenario live on this machine: broker, controller (in this process) and N worker processes.

Every process this module starts is recorded by PID in ``<run>/pids.json`` and stopped by PID; the
embedded broker likewise. Ctrl-C / SIGTERM stop the clock, tell the workers to finish (they write
their stats), and the summary is still written.

This module holds what `orbitmesh run` was asked (:class:`RunOptions`) and the run's preparation
and cleanup (:func:`run`); the run in flight is :class:`~orbitmesh.run.launch.local_run.LocalRun`,
what it leaves :mod:`orbitmesh.run.launch.local_summary`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from broker.credentials import RunCredentials
from broker.embedded import EmbeddedBroker
from broker.url import BrokerURL, parse_broker_url
from orbitmesh.core.engine import LinkSource, compile_kernels
from orbitmesh.core.limits import run_clock
from orbitmesh.core.placement import place, worker_count
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.errors import ScenarioError
from orbitmesh.run.launch.endpoint_containers import remove_recorded
from orbitmesh.run.launch.local_run import LocalRun
from orbitmesh.run.launch.local_summary import RunResult, print_result
from orbitmesh.run.launch.lockdown import start_broker
from orbitmesh.run.launch.netns import (
    EndpointSetupError,
    cleanup_recorded,
    read_plan,
    with_endpoints,
    write_plan,
)
from orbitmesh.run.launch.replay import check_nodes, replay_scenario, write_replay
from orbitmesh.run.trace import LinkTimeline, Offered
from orbitmesh.run.web.live import LiveOptions


@dataclass
class RunOptions:
    """What `orbitmesh run` was asked to do."""

    scenario: Path
    duration_s: float | None = None
    speed: float | None = None
    workers: int | None = None
    broker: str = "embedded"
    out: Path | None = None
    run_id: str | None = None
    progress: bool = True
    replay: list[Offered] | None = None
    """Offered traffic to replay instead of the scenario's flows (orbitmesh replay)."""
    replay_faults: list[dict[str, Any]] | None = None
    links_from: Path | None = None
    """A trace whose link timeline replaces geometry."""
    salvage: bool = False
    """Replay a damaged link timeline up to its damage (orbitmesh replay --salvage)."""
    replay_origin: str = ""
    placement: str = "blocks"
    external_workers: bool = False
    """Do not start workers: wait for workers started elsewhere (containers) to report."""
    fidelity_budget_ms: float | None = None
    """Overrides the scenario's ``fidelity.budget_ms``."""
    broker_insecure: bool = False
    """Embedded broker without credentials or ACL (open to every local process)."""
    tls: bool = False
    """Embedded broker: TLS listener with a run CA (clients verify it)."""
    broker_credentials: Path | None = None
    """External broker: per-role credentials from ``orbitmesh broker-config``."""
    broker_file: Path | None = None
    """External broker: a 0600 file holding its URL with the controller's credentials."""
    live: LiveOptions = dataclasses.field(default_factory=LiveOptions)
    """The live map (--web, --web-control) and /metrics (--metrics)."""
    endpoints: list[str] | None = None
    """Nodes that get an IP endpoint besides the scenario's ``endpoints.ip`` (run --endpoints)."""
    route_to: Literal["used", "all"] = "used"
    """Route trees toward the addressable ground nodes (used) or every one (all); see
    :mod:`orbitmesh.core.destinations`."""
    broker_members: tuple[str, ...] = ()
    """Every --broker when several were given: a clustered broker's members (worker k uses
    member k mod M first, the controller member 0; all fail over)."""


def run_cli(args: argparse.Namespace) -> int:
    """`orbitmesh run`: run, print the summary table, exit non-zero if conservation broke."""
    brokers = list(args.broker or ["embedded"])  # --broker is repeatable: a cluster's members
    opts = RunOptions(Path(args.scenario), args.duration, args.speed, args.workers, brokers[0],
                      Path(args.out) if args.out else None, args.run_id, not args.quiet,
                      placement=args.placement, external_workers=args.external_workers,
                      fidelity_budget_ms=args.fidelity_budget,
                      broker_insecure=args.broker_insecure, tls=args.tls,
                      broker_credentials=Path(args.broker_credentials)
                      if args.broker_credentials else None,
                      broker_file=Path(args.broker_file)
                      if getattr(args, "broker_file", None) else None,
                      endpoints=_node_list(getattr(args, "endpoints", None)),
                      route_to=getattr(args, "route_to", "used"),
                      broker_members=tuple(brokers) if len(brokers) > 1 else ())
    opts.live = LiveOptions(getattr(args, "web", None), bool(getattr(args, "web_control", False)),
                            getattr(args, "metrics", None))
    return print_result(run(opts))


def _node_list(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


COMPILE_NOTE_S = 2.0
"""Compiling the geometry kernels longer than this is said (a cold numba cache: ~20 s)."""


def _compile_kernels() -> None:
    """Compile (or load) the tick's kernels before the clock: the first tick must not pay."""
    started = time.monotonic()
    compile_kernels()
    spent_s = time.monotonic() - started
    if spent_s > COMPILE_NOTE_S:
        print(f"compiled the geometry kernels in {spent_s:.0f} s (numba keeps them for later "
              "runs; `make venv` compiles them at install)", file=sys.stderr, flush=True)


def run(opts: RunOptions) -> RunResult:
    """Run a scenario to the end (or to Ctrl-C) and return its summary."""
    scenario = load_scenario(opts.scenario)
    if opts.fidelity_budget_ms is not None:
        if not 0.0 < opts.fidelity_budget_ms <= 60_000.0:
            raise ScenarioError(f"--fidelity-budget {opts.fidelity_budget_ms:g}: expected a "
                                "number of scenario ms in (0, 60000]")
        scenario = scenario.model_copy(update={"fidelity": scenario.fidelity.model_copy(
            update={"budget_ms": opts.fidelity_budget_ms})})
    # Overrides pass the file's own bounds (--speed 0 or -1 is refused, not ignored).
    duration, speed = run_clock(scenario, opts.duration_s, opts.speed)
    topology = build_topology(scenario)
    _compile_kernels()
    if opts.replay is not None:
        # Replayed traffic does not change the nodes: check it, then swap the flows in.
        check_nodes(opts.replay, set(topology.node_ids), opts.replay_origin)
        scenario = replay_scenario(scenario, opts.replay, duration_s=duration,
                                   faults=opts.replay_faults)
        topology = dataclasses.replace(topology, scenario=scenario)
    # `orbitmesh up` writes the endpoint record, checks what its worker containers need and
    # starts the endpoint containers before this controller: then they are its to check.
    planned = (opts.external_workers and opts.out is not None
               and read_plan(opts.out.resolve()) is not None)
    if opts.external_workers and not planned and any(e.container for e in
                                                      scenario.endpoints.ip):
        raise EndpointSetupError(f"{opts.scenario}: endpoints.ip[].container with "
                                 "--external-workers: nobody would start those containers; "
                                 "run the scenario with `orbitmesh up --backend docker` or "
                                 "`orbitmesh run`")
    scenario = with_endpoints(topology, opts.endpoints, check=not planned)  # refuses up front
    topology = dataclasses.replace(topology, scenario=scenario)
    workers = worker_count(topology, opts.placement, opts.workers or os.cpu_count() or 1)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (opts.out or Path("runs") / f"{scenario.name}-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if opts.replay is not None:
        write_replay(run_dir, scenario, opts.replay)
    else:
        shutil.copy(opts.scenario, run_dir / "scenario.yaml")
    link_source = (LinkTimeline(opts.links_from, topology, salvage=opts.salvage)
                   if opts.links_from else None)
    run_id = opts.run_id or re.sub(r"[^A-Za-z0-9_.-]", "-", run_dir.name)
    if not planned:
        write_plan(run_dir, topology, run_id, place(topology, workers, opts.placement))
    broker, url, credentials, broker_label = start_broker(opts, run_dir, run_id, workers)
    try:
        return asyncio.run(_run(topology, run_dir, run_id, url, broker_label, workers,
                                duration, speed, opts.progress, broker, link_source, opts,
                                credentials))
    finally:
        if broker is not None:
            broker.stop()
        for name in cleanup_recorded(run_dir):  # what a worker could not remove (killed)
            print(f"removed namespace {name} left by a worker", file=sys.stderr)
        if not opts.external_workers:  # else they are the launcher's (`orbitmesh up`)
            remove_recorded(run_dir)  # endpoint containers, by the run's label


async def _run(topology: Topology, run_dir: Path, run_id: str, url: BrokerURL, broker_label: str,
               workers: int, duration: float, speed: float, progress: bool,
               broker: EmbeddedBroker | None = None,
               link_source: LinkSource | None = None,
               opts: RunOptions | None = None,
               credentials: RunCredentials | None = None) -> RunResult:
    run = LocalRun(topology, run_dir, run_id, url, workers, duration, speed, broker)
    run.link_source = link_source
    run.credentials = credentials
    if opts is not None:
        run.members = [parse_broker_url(u) for u in opts.broker_members] or [url]
        run.placement_mode = opts.placement
        run.external = opts.external_workers
        run.placement = place(topology, workers, opts.placement)
        run.live = opts.live
        run.route_to = opts.route_to
    return await run.execute(broker_label, progress)
