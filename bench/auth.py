"""What the locked-down broker costs the message plane: the same load with per-run users and
ACL (the default) and with ``--broker-insecure``, side by side; prints JSON lines.

    .venv/bin/python bench/auth.py [--load 50000] [--duration 20] [--rounds 2]

Each case runs bench/messaging.py's synthetic chain (every hop crosses the two workers over
MQTT) through ``orbitmesh.run.launch.local.run`` with the run's own embedded mosquitto, as a
user's run would be; rounds alternate between the two so that drift on the machine hits both.
``frame_hops_per_s`` is the steady rate of delivered frames' hops (as in bench/messaging.py);
``worker_cpu_s`` the workers' CPU seconds. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ProcSampler, emit, machine, unexplained_loss, worker_pids
from messaging import _steady_rate, scenario_yaml

from orbitmesh.run.launch.local import RunOptions, run


def case(locked: bool, load: float, duration_s: float, root: Path, k: int) -> dict[str, Any]:
    """One run, locked or open; its steady throughput, excess and CPU."""
    name = f"{'locked' if locked else 'open'}-{k}"
    case_dir = root / name
    case_dir.mkdir()
    path = case_dir / "messaging.yaml"
    path.write_text(scenario_yaml(chain=9, flows=32, load_hops_per_s=load,
                                  duration_s=duration_s))
    run_dir = case_dir / "run"

    def pids() -> dict[str, int]:
        return {"launcher": os.getpid(), **worker_pids(run_dir)}

    with ProcSampler(pids) as procs:
        result = run(RunOptions(scenario=path, duration_s=duration_s, workers=2, out=run_dir,
                                run_id=f"bench-auth-{name}-{os.getpid()}", progress=False,
                                broker_insecure=not locked))
    s = result.summary
    return {"case": "locked" if locked else "open", "round": k, "offered_load_hops_per_s": load,
            "frame_hops_per_s": _steady_rate(run_dir, duration_s)["frame_hops_per_s"],
            "hop_excess_ms": s["fidelity"]["hop_excess_ms"],
            "worker_cpu_s": round(sum(v for r, v in procs.cpu_s.items() if r.startswith("w")),
                                  2),
            "unexplained_loss": unexplained_loss(s), "conservation_ok": s["conservation_ok"],
            "foreign_cpu_s": round(procs.foreign_cpu_s, 2)}


def main(argv: list[str] | None = None) -> int:
    """Alternate locked and open runs; print each and the ratio of the means."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", type=float, default=50_000.0, help="offered frame-hops/s")
    p.add_argument("--duration", type=float, default=20.0, help="scenario seconds per run")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    emit({"bench": "auth", "machine": machine()})
    rates: dict[str, list[float]] = {"locked": [], "open": []}
    with tempfile.TemporaryDirectory(prefix="orbitmesh-bench-auth-") as tmp:
        for k in range(args.rounds):
            for locked in ((True, False) if k % 2 == 0 else (False, True)):
                row = case(locked, args.load, args.duration, Path(tmp), k)
                rates[row["case"]].append(float(row["frame_hops_per_s"] or 0.0))
                emit(row)
    locked_mean = sum(rates["locked"]) / len(rates["locked"])
    open_mean = sum(rates["open"]) / len(rates["open"])
    emit({"case": "verdict", "locked_mean_hops_per_s": round(locked_mean),
          "open_mean_hops_per_s": round(open_mean),
          "cost_pct": round(100.0 * (1.0 - locked_mean / open_mean), 2) if open_mean else None,
          "target_cost_pct": 5.0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
