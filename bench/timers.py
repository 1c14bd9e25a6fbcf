"""The machine's own timer lateness: how late does a sleeping process wake? Prints JSON lines.

    .venv/bin/python bench/timers.py [--seconds 5]

A worker sleeps between events, so this is the floor under orbitmesh's hop excess: whatever the
operating system adds to a wake-up, no emulator that sleeps can undo. Each case sleeps a random
1-10 ms, again and again, and records how much later than asked it woke (ms): ``time.sleep``,
``select()`` (what the workers' event loop waits in), and an asyncio timer on a select() loop
(the workers' own loop). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import select
import selectors
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine


def lateness(sleep: Callable[[float], None], seconds: float, rng: random.Random) -> np.ndarray:
    """Wake-up lateness (ms) of ``sleep`` over ``seconds``."""
    late = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        delay = rng.uniform(0.001, 0.010)
        due = time.monotonic() + delay
        sleep(delay)
        late.append((time.monotonic() - due) * 1000.0)
    return np.asarray(late)


def loop_lateness(seconds: float, rng: random.Random) -> np.ndarray:
    """The same through an asyncio timer on a select() event loop."""
    late: list[float] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            due = loop.time() + rng.uniform(0.001, 0.010)
            woke = loop.create_future()
            loop.call_at(due, woke.set_result, None)
            await woke
            late.append((loop.time() - due) * 1000.0)

    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return np.asarray(late)


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per case."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per case")
    args = p.parse_args(argv)
    rng = random.Random(7)
    emit({"bench": "timers", "machine": machine()})
    cases = {"time.sleep": lambda: lateness(time.sleep, args.seconds, rng),
             "select": lambda: lateness(lambda d: select.select([], [], [], d), args.seconds, rng),
             "asyncio-select-loop": lambda: loop_lateness(args.seconds, rng)}
    for name, measure in cases.items():
        late = measure()
        p50, p90, p99, p999 = np.percentile(late, [50, 90, 99, 99.9])
        emit({"case": name, "wakeups": len(late), "late_ms": {
            "p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "p99.9": round(float(p999), 3), "max": round(float(late.max()), 3)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
