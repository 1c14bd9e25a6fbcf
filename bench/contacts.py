"""`orbitmesh contacts` on a big shell: wall time, peak RSS, time to the first row, per stage; JSON.

    .venv/bin/python bench/contacts.py [--scenario scenarios/starlink-shell1.yaml]
        [--end 2026-01-02T00:00:00Z] [--format json|table] [--sgp4-step 60]

Two runs. The first is the real command in a child process, as a user runs it (imports
included): wall seconds, peak RSS of the command and of its largest worker (the kernel reports
the largest reaped descendant; ``cpu_s`` is all of them), the rows written and when the first
one reached the pipe. The second runs the same search in this process with each stage timed
(CPU seconds; this process then scans every chunk itself: no workers). Issue 14's target:
shell 1, 68 stations, 24 h in <= 5 s and <= 200 MB. ``--sgp4-step`` passes the command's option
(SGP4 every that many seconds, cubic Hermite between; default: SGP4's own value at every 30 s
sample a pass can use, :mod:`orbitmesh.core._pass_sparse`, whose knots, interpolation and
SGP4 calls count as ``propagation_s`` and whose near test as ``near_test_s``). Run it alone on
the machine for figures worth recording.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit, machine


def _child_run(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI in a child process: wall, peak RSS, rows, time to the first row."""
    cmd = [sys.executable, "-m", "orbitmesh.run.cli", "contacts", args.scenario, "--format",
           args.format, "--end", args.end, *_step_args(args)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first_row_s, rows = None, 0
    for line in proc.stdout:
        if line.startswith("  {") or (args.format == "table" and rows >= 0 and line[:1].isalnum()
                                      and not line.startswith("station")):
            rows += 1
            if first_row_s is None:
                first_row_s = time.perf_counter() - t0
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"orbitmesh contacts failed (wait status {status})")
    return {"wall_s": round(wall_s, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
            "passes": rows, "first_row_s": None if first_row_s is None else round(first_row_s, 3),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}


def _step_args(args: argparse.Namespace) -> list[str]:
    return [] if args.sgp4_step is None else ["--sgp4-step", f"{args.sgp4_step:g}"]


def _timed(stages: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t = time.process_time()
        try:
            return fn(*a, **kw)
        finally:
            stages[name] = stages.get(name, 0.0) + time.process_time() - t
    return wrapper


def _stage_run(args: argparse.Namespace) -> dict[str, Any]:
    """The same search in this process, each stage's CPU seconds summed (no workers)."""
    # What every `orbitmesh` command imports and builds before it starts (a fresh process).
    probe = subprocess.Popen([sys.executable, "-c", "import orbitmesh.run.cli as c; c._parser()"],
                             cwd=PROJECT_ROOT)
    usage = os.wait4(probe.pid, 0)[2]
    imports_s = usage.ru_utime + usage.ru_stime
    t = time.process_time()
    from orbitmesh.core.passes import load_kernel

    load_kernel()  # numba's start: once per process that scans (each worker pays it)
    numba_start_s = time.process_time() - t
    from orbitmesh.core import _pass_kernel, _pass_sparse, passes
    from orbitmesh.core._pass_assembly import Assembler
    from orbitmesh.core.pass_table import PassTable
    from orbitmesh.run.cli import _load, _parser
    from orbitmesh.run.contacts_cli import write_passes

    stages: dict[str, float] = {"imports_s": imports_s, "numba_start_s": numba_start_s}
    passes.ecef_valid_km = _timed(stages, "propagation_s", passes.ecef_valid_km)
    passes.hermite_ecef_km = _timed(stages, "propagation_s", passes.hermite_ecef_km)
    # The default's sparse propagation: knots and interpolation, then SGP4 near the stations.
    sparse = _pass_sparse.SparseChunk
    sparse.__init__ = _timed(stages, "propagation_s", sparse.__init__)  # type: ignore
    sparse.refine = _timed(stages, "propagation_s", sparse.refine)  # type: ignore
    sparse.mark = _timed(stages, "near_test_s", sparse.mark)  # type: ignore
    passes.candidate_pairs = _timed(stages, "screen_s", passes.candidate_pairs)
    _pass_kernel.scan_block = _timed(stages, "elevations_and_refinement_s",  # type: ignore
                                     _pass_kernel.scan_block)
    Assembler.close = _timed(stages, "pairing_s", Assembler.close)  # type: ignore
    json_text, table_rows = PassTable.json_text, PassTable.table_rows
    PassTable.json_text = _timed(stages, "output_formatting_s",  # type: ignore
                                 json_text)
    PassTable.table_rows = _timed(stages, "output_formatting_s",  # type: ignore
                                  lambda self, w: list(table_rows(self, w)))
    ns = _parser().parse_args(["contacts", args.scenario, "--format", args.format, "--end",
                               args.end, *_step_args(args)])
    t = time.process_time()
    topology = _load(args.scenario)
    stages["load_scenario_s"] = time.process_time() - t
    wall = time.perf_counter()
    cpu = time.process_time()
    write_passes(topology, ns, io.StringIO(), workers=0)
    stages["search_wall_s"] = time.perf_counter() - wall
    stages["search_cpu_s"] = time.process_time() - cpu
    return {k: round(v, 3) for k, v in stages.items()}


def main() -> None:
    """Run both measurements and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/starlink-shell1.yaml")
    parser.add_argument("--end", default="2026-01-02T00:00:00Z")
    parser.add_argument("--format", choices=("json", "table"), default="json")
    parser.add_argument("--sgp4-step", type=float, help="seconds between SGP4 calls (60: Hermite "
                        "between; default: SGP4 at every grid sample)")
    args = parser.parse_args()
    record: dict[str, Any] = {"bench": "contacts", "scenario": args.scenario, "end": args.end,
                              "format": args.format, "sgp4_step_s": args.sgp4_step,
                              "machine": machine()}
    record.update(_child_run(args))
    record["stages"] = _stage_run(args)
    emit(record)


if __name__ == "__main__":
    main()
