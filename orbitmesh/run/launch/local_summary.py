"""What a local run leaves: its summary (summary.json, the manifest's end), the table and the exit.

:func:`summarise` gathers the controller's counts, the faults (planned, and the process and broker
losses nobody asked for) and the workers' stats files into ``summary.json``; :class:`RunResult`
says whether the run held (its exit code comes from :func:`print_result`).
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orbitmesh import __version__
from orbitmesh.core.destinations import UNROUTED_DESTINATION
from orbitmesh.run.files import DiskError
from orbitmesh.run.report import (
    build_summary,
    format_summary,
    load_worker_stats,
    percentiles,
    write_summary,
)
from orbitmesh.run.trace import write_manifest

if TYPE_CHECKING:
    from orbitmesh.run.launch.local_run import LocalRun


@dataclass
class RunResult:
    """Where the run wrote its results and what they say."""

    run_dir: Path
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when the conservation check held, the run kept its fidelity budget and lost no
        process it did not mean to."""
        return (bool(self.summary["conservation_ok"]) and bool(self.summary["fidelity"]["ok"])
                and not self.summary.get("unplanned") and not self.summary.get("internal_errors")
                and not self.summary.get(UNROUTED_DESTINATION)
                and not _stopped_by_container(self.summary))


def _stopped_by_container(summary: dict[str, Any]) -> bool:
    """True when an endpoint container with ``on_exit: stop`` exited (the run ended for it)."""
    containers = (summary.get("endpoints") or {}).get("containers", [])
    return any(c.get("on_exit") == "stop" and c.get("state") != "running" for c in containers)


def print_result(result: RunResult) -> int:
    """Print the summary table; its exit code (1: conservation or fidelity broken, 130: Ctrl-C)."""
    print(format_summary(result.summary))
    print(f"results: {result.run_dir}")
    if not result.ok:
        return 1
    return 130 if result.summary["run"]["interrupted"] else 0


def summarise(run: LocalRun, broker_label: str, started: datetime) -> RunResult:
    """Write summary.json and the manifest's last word; a full disk: the table, then raise."""
    controller = run.controller
    assert controller is not None
    scenario = run.topology.scenario
    links = {"handovers": controller.handovers,
             "route_changes": controller.engine.route_changes_total,
             "ticks": len(controller.tick_compute_ms),
             "tick_compute_ms": percentiles(controller.tick_compute_ms, (50, 99))}
    meta = {"id": run.run_id, "scenario": scenario.name,
            "scenario_file": str(scenario.source), "seed": scenario.seed,
            "speed": run.speed, "duration_s": run.duration, "workers": run.workers,
            "broker": broker_label, "started": started.isoformat(),
            "t0_wall": controller.t0_wall, "ended": datetime.now(UTC).isoformat(),
            "interrupted": run.stop.is_set(), "control_errors": controller.control_errors,
            "versions": _versions()}
    faults = [{**f.describe(), **run.process_faults.get(f.id, {})}
              for f in controller.faults]
    faults += [run.brokers.lost] if run.brokers.lost is not None else []
    for info in run.process_faults.values():
        if info.get("origin") == "unplanned":
            proc = run.procs.get(int(info["target"]["worker"]))
            code = None if proc is None else proc.returncode
            info["exit"] = (None if code is None else f"signal {-code}" if code < 0
                            else f"exit code {code}")
            how = info["exit"] or "still running: its broker connection dropped"
            info["describe"] = (f"worker {info['target']['worker']} (pid {info['pid']}) "
                                f"lost at t={info['start_s']:g} s ({how})")
            faults.append(info)
    summary = build_summary(run.run_dir, scenario, meta, links, run.workers, faults)
    if run.malformed_status:  # the launcher's own count: statuses it refused
        summary["malformed_by_topic"]["status"] = run.malformed_status
        summary["malformed"] += run.malformed_status
    # A full disk ends the run with one line (and exit 1), after saving what still fits.
    errors = [e for e in (controller.write_error,) if e is not None]
    summary["run"]["write_errors"] = [str(e) for e in errors]
    summary["run"]["write_errors"] += [  # a worker's event log cut by a full disk
        f"worker {w.get('worker')}: event log cut at byte {cut.get('bytes')}: "
        f"{cut.get('error')}" for w in load_worker_stats(run.run_dir)
        if isinstance(cut := w.get("events_truncated_at"), dict)]
    for write in (lambda: write_summary(run.run_dir, summary), lambda: write_manifest(
            run.run_dir, {**run.manifest, "faults": faults, "complete": not errors,
                          "interrupted": run.stop.is_set()})):
        try:
            write()
        except DiskError as exc:
            errors.append(exc)
    if errors:
        print(format_summary(summary))  # print_result will not run: the table goes out here
        raise errors[0]
    return RunResult(run.run_dir, summary)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"orbitmesh": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "sgp4", "aiomqtt", "paho-mqtt", "msgpack"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
