"""What the live map and /metrics cost a run: CPU seconds with and without them; one JSON line.

    .venv/bin/python bench/web.py [--scenario PATH] [--duration 30] [--speed 2] [--repeat 1]

Runs ``orbitmesh run`` as its own process, as a user would, once plain and once with
``--web --metrics`` while this script holds the page's event stream open and scrapes /metrics
every second (Prometheus' usual interval is 15 s: this is the harsher case). CPU is the user +
system time of the run's whole process tree (launcher, workers, embedded mosquitto), read from
``getrusage(RUSAGE_CHILDREN)`` around each run. No browser is started: rendering costs the
viewer's machine, not the run (bench/map_render.py measures the render time). Run it alone on the
machine: other load shows up as noise in both figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit, machine

DEFAULT_SCENARIO = PROJECT_ROOT / "scenarios" / "demo.yaml"


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _watch(out: Path, proc: subprocess.Popen[bytes], stop: threading.Event,
           seen: dict[str, int]) -> None:
    """Hold the event stream open and scrape /metrics once a second until ``stop``."""
    web_file = out / "web.json"
    while not web_file.is_file() and proc.poll() is None:
        time.sleep(0.1)
    if proc.poll() is not None:
        return
    urls = json.loads(web_file.read_text())

    def stream() -> None:
        with contextlib.suppress(OSError), urlopen(urls["web"] + "api/events", timeout=60) as r:
            for line in r:
                if line.startswith(b"data: "):
                    seen["frames"] += 1
                if stop.is_set():
                    return

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    while not stop.wait(1.0):
        with contextlib.suppress(OSError), urlopen(urls["metrics"], timeout=5) as r:
            r.read()
            seen["scrapes"] += 1


def run_once(scenario: Path, duration_s: float, speed: float, web: bool) -> dict[str, Any]:
    """One run; its CPU seconds, wall seconds and exit code."""
    with tempfile.TemporaryDirectory(prefix="orbitmesh-bench-web-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-c", "from orbitmesh.run.cli import main; raise SystemExit(main())",
               "run", str(scenario), "--duration", str(duration_s), "--speed", str(speed),
               "--workers", "2", "--out", str(out), "--quiet", "--fidelity-budget", "1000"]
        if web:
            cmd += ["--web", "--metrics"]
        before, started = _children_cpu_s(), time.monotonic()
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        seen = {"frames": 0, "scrapes": 0}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(out, proc, stop, seen), daemon=True)
        if web:
            watcher.start()
        code = proc.wait()
        stop.set()
        if web:
            watcher.join(5.0)
        return {"cpu_s": round(_children_cpu_s() - before, 3),
                "wall_s": round(time.monotonic() - started, 3), "exit": code, **seen}


def main() -> None:
    """Print one JSON line: CPU with and without the web/metrics server."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    p.add_argument("--duration", type=float, default=30.0, help="scenario seconds per run")
    p.add_argument("--speed", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs (alternating)")
    args = p.parse_args()
    plain, served = [], []
    for _ in range(args.repeat):
        plain.append(run_once(args.scenario, args.duration, args.speed, web=False))
        served.append(run_once(args.scenario, args.duration, args.speed, web=True))
    cpu_plain = sum(r["cpu_s"] for r in plain) / len(plain)
    cpu_served = sum(r["cpu_s"] for r in served) / len(served)
    emit({"bench": "web", "scenario": args.scenario.name, "duration_s": args.duration,
          "speed": args.speed, "repeat": args.repeat, "cpu_s_plain": round(cpu_plain, 3),
          "cpu_s_with_web_and_metrics": round(cpu_served, 3),
          "extra_cpu_pct": round(100.0 * (cpu_served - cpu_plain) / cpu_plain, 2),
          "target_pct": 5.0, "runs": {"plain": plain, "web": served}, "machine": machine()})


if __name__ == "__main__":
    main()
