"""How long the live map takes to draw one update of a big shell (headless Chromium); JSON.

    .venv/bin/python bench/map_render.py [--scenario scenarios/starlink-shell1.yaml] [--updates 30]

The page is served by orbitmesh's own web server and fed one tick's frame per second (the live
rate), computed with a TickEngine in this process; the page records how long each update took
to draw (``window.orbitmeshState.renders``, ms of the browser's main thread). Issue 12's budget:
50 ms per update on starlink-shell1. Rendering costs the viewer's machine, not the run
(bench/web.py measures what the run pays). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit, machine

from orbitmesh.core.engine import TickEngine
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.protocol.state import decode_state, encode_state
from orbitmesh.run.web.server import WebServer
from orbitmesh.run.web.view import RunView, static_meta
from tests.browser import chromium

BUDGET_MS = 50.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(scenario_path: Path, updates: int) -> dict[str, object]:
    """Push ``updates`` frames a second apart and return the page's render times."""
    scenario = load_scenario(scenario_path)
    topology = build_topology(scenario)
    view = RunView(topology, scenario_path.stem)
    engine = TickEngine(topology)
    meta = static_meta(topology, scenario_path.stem, control=False, replay=False)
    with tempfile.TemporaryDirectory() as profile:
        async with WebServer("127.0.0.1", 0, meta=lambda: meta,
                             frame=lambda q: view.frame_json()) as web, \
                chromium(Path(profile)) as context:
            page = await context.new_page()
            await page.goto(web.url)
            await page.wait_for_function("window.orbitmeshState !== undefined", timeout=30_000)
            links = 0
            for k in range(updates):
                tick = engine.step(k * scenario.tick_s)
                links = len(tick.state.a)
                view.snapshot = decode_state(encode_state(k, tick.state, tick.routes),
                                             topology.n_nodes)
                web.hub.publish(view.frame_json())
                await asyncio.sleep(1.0)
            await page.wait_for_function(f"window.orbitmeshState.updates >= {updates - 1}",
                                         timeout=30_000)
            state = await page.evaluate("window.orbitmeshState")
    renders = [float(ms) for ms in state["renders"]]
    return {
        "bench": "map_render", "scenario": scenario_path.name,
        "satellites": topology.n_satellites, "links": links, "updates": len(renders),
        "render_ms": {"mean": round(sum(renders) / len(renders), 2),
                      "p50": round(_percentile(renders, 0.5), 2),
                      "p99": round(_percentile(renders, 0.99), 2),
                      "max": round(max(renders), 2)},
        "budget_ms": BUDGET_MS, "within_budget": max(renders) <= BUDGET_MS,
        "machine": machine(),
    }


def main() -> None:
    """Parse the arguments, measure, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path,
                        default=PROJECT_ROOT / "scenarios" / "starlink-shell1.yaml")
    parser.add_argument("--updates", type=int, default=30)
    args = parser.parse_args()
    emit(asyncio.run(measure(args.scenario, max(2, args.updates))))


if __name__ == "__main__":
    main()
