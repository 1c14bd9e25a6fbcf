"""Soak: shell 1 live at speed 1 for a long time; does worker memory stay flat? One JSON line.

    .venv/bin/python bench/soak.py [--minutes 30] [--scenario PATH] [--workers N]

Runs ``orbitmesh run`` (embedded mosquitto, controller, worker processes) as its own process,
as a user would, and samples the RSS of every worker (and of the launcher and the broker) every
``--sample-s`` seconds. After a warm-up (start-up, first routes, histograms filling their exact
part: ``--warmup-s``, at most a quarter of the run), the growth of each process is the slope of
a least-squares line through its samples, in MB per 10 minutes — the issue's target is
<= 1 MB per 10 min per worker — and the same slope over the second half of those samples alone
(a growth that levels off is smaller there). It also prints the run's hop excess (the fidelity
block of summary.json) and whether conservation held. Run it alone on the machine. Where a
growth comes from: bench/soak_virtual.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit, machine, rss_mb, total_frame_hops, worker_pids

from orbitmesh.run.report import load_worker_stats

DEFAULT_SCENARIO = PROJECT_ROOT / "scenarios" / "starlink-shell1.yaml"
TARGET_MB_PER_10_MIN = 1.0
TEN_MINUTES_S = 600.0


def growth_mb_per_10_min(t_s: list[float], rss: list[float]) -> float | None:
    """Least-squares slope of RSS over time, in MB per 10 minutes (None: too few samples)."""
    if len(t_s) < 3 or t_s[-1] - t_s[0] <= 0.0:
        return None
    slope_mb_per_s = float(np.polyfit(np.asarray(t_s), np.asarray(rss), 1)[0])
    return slope_mb_per_s * TEN_MINUTES_S


def soak(scenario: Path, minutes: float, sample_s: float, warmup_s: float,
         workers: int | None, out: Path) -> dict[str, Any]:
    """Run the scenario for ``minutes`` at speed 1, sampling RSS; the benchmark's record."""
    duration_s = minutes * 60.0
    warmup_s = min(warmup_s, duration_s / 4.0)
    command = [sys.executable, "-m", "orbitmesh", "run", str(scenario), "--speed", "1",
               "--duration", f"{duration_s:g}", "--out", str(out), "--quiet"]
    if workers is not None:
        command += ["--workers", str(workers)]
    record: dict[str, Any] = {"bench": "soak", "scenario": scenario.name, "minutes": minutes,
                              "speed": 1, "sample_s": sample_s, "warmup_s": warmup_s,
                              "machine": machine()}
    samples: dict[str, list[tuple[float, float]]] = {}
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    clock_at: float | None = None
    try:
        while proc.poll() is None:
            if clock_at is None and (out / "trace.json").is_file():
                manifest = json.loads((out / "trace.json").read_text())
                if manifest.get("t0_wall") is not None:
                    clock_at = time.monotonic()  # scenario time runs from here
            if clock_at is not None:
                now = time.monotonic() - clock_at
                pids = {**worker_pids(out), "launcher": proc.pid}
                for role, pid in pids.items():
                    value = rss_mb(pid)
                    if value is not None:
                        samples.setdefault(role, []).append((now, value))
            deadline = time.monotonic() + sample_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        _out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=60)
    record["exit_code"] = proc.returncode
    record["wall_s"] = round(time.monotonic() - started, 1)
    record["rss_mb"] = {}
    for role, series in sorted(samples.items()):
        kept = [(t, v) for t, v in series if t >= warmup_s]
        growth = growth_mb_per_10_min([t for t, _ in kept], [v for _, v in kept])
        # The second half alone: a growth that levels off (a structure filling to its bound)
        # shows as a smaller slope there; one without a bound does not.
        late = [(t, v) for t, v in kept if t >= (warmup_s + duration_s) / 2.0]
        late_growth = growth_mb_per_10_min([t for t, _ in late], [v for _, v in late])
        record["rss_mb"][role] = {
            "first": round(series[0][1], 2), "after_warmup": round(kept[0][1], 2) if kept else None,
            "last": round(series[-1][1], 2), "peak": round(max(v for _, v in series), 2),
            "samples": len(series),
            "growth_mb_per_10min": None if growth is None else round(growth, 3),
            "second_half_growth_mb_per_10min":
                None if late_growth is None else round(late_growth, 3)}
    growths = [r["growth_mb_per_10min"] for role, r in record["rss_mb"].items()
               if role.startswith("w") and r["growth_mb_per_10min"] is not None]
    record["worst_worker_growth_mb_per_10min"] = max(growths) if growths else None
    record["target_mb_per_10min"] = TARGET_MB_PER_10_MIN
    record["memory_ok"] = bool(growths) and max(growths) <= TARGET_MB_PER_10_MIN
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        record["error"] = f"no summary.json: {exc}; launcher stderr: {err.decode()[-2000:]}"
        return record
    fidelity = summary["fidelity"]
    record |= {"workers": summary["run"]["workers"],
               "conservation_ok": summary["conservation_ok"],
               "unexplained": sum(c["unexplained"] for c in summary["conservation"]),
               "hop_excess_ms": fidelity["hop_excess_ms"], "fidelity_ok": fidelity["ok"],
               "frame_hops": total_frame_hops(load_worker_stats(out)),
               "offered": sum(f["offered"] for f in summary["flows"]),
               "delivered": sum(f["delivered"] for f in summary["flows"]),
               "malformed": summary["malformed"], "unplanned": len(summary["unplanned"])}
    record["frame_hops_per_s"] = round(record["frame_hops"] / max(1.0, duration_s), 1)
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its JSON line; exit 1 when memory grew past the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="run length (default 30)")
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO,
                        help="scenario file (default scenarios/starlink-shell1.yaml)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes")
    parser.add_argument("--sample-s", type=float, default=10.0,
                        help="seconds between RSS samples (default 10)")
    parser.add_argument("--warmup-s", type=float, default=120.0,
                        help="samples before this (scenario s) are not in the slope (default "
                             "120; at most a quarter of the run)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.sample_s <= 0:
        parser.error("--minutes and --sample-s must be > 0")
    if args.out is not None:
        record = soak(args.scenario, args.minutes, args.sample_s, args.warmup_s, args.workers,
                      args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="orbitmesh-soak-") as tmp:
            record = soak(args.scenario, args.minutes, args.sample_s, args.warmup_s,
                          args.workers, Path(tmp) / "run")
    emit(record)
    return 0 if record["memory_ok"] and record.get("conservation_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
