"""The live map in headless Chromium, against a real run on a real mosquitto; /metrics at the end.

One run of scenarios/demo.yaml (speed 2, ``--web --web-control --metrics``) is driven from the
page: satellites, links and the flow's path are drawn (``window.orbitmeshState`` and the canvas'
data attributes), a screenshot is saved in the run directory, a fault injected from the page
shows in the run's fault list, and the page asks nothing of any host but the orbitmesh server.
The last scrape (``metrics.prom``) parses with prometheus_client's parser and its counters equal
summary.json's. A second test draws starlink-shell1 (bench/map_render.py times its renders).

Chromium is Debian's, driven by playwright (tests/browser.py): no browser is downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orbitmesh.core.engine import TickEngine
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.protocol.state import decode_state, encode_state
from orbitmesh.run.launch.control import list_faults, locate
from orbitmesh.run.web.replay import Replay
from orbitmesh.run.web.server import WebServer
from orbitmesh.run.web.view import RunView, static_meta
from tests.browser import chromium
from tests.conftest import require_mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parent.parent
RUN_S = 40.0
"""Scenario seconds of the demo run (20 wall seconds at speed 2)."""


async def _wait_file(path: Path, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(path.is_file):
        if proc.returncode is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before writing {path}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path} after {timeout_s:g} s")
        await asyncio.sleep(0.1)


def _fetch(url: str) -> str:
    with urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_live_page_draws_injects_and_stays_offline(tmp_path: Path) -> None:
    require_mosquitto()
    run_dir = tmp_path / "run"
    # A behaviour test carries a loose budget (it tests the page, not timing): a live fault
    # republishes the tick in force, which a loaded 2-core machine may apply a tick late.
    body = yaml.safe_load((PROJECT / "scenarios" / "demo.yaml").read_text())
    body["fidelity"] = {"budget_ms": 1000.0, "link_apply_budget_ms": 5000.0}
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(yaml.safe_dump(body))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from orbitmesh.run.cli import main; raise SystemExit(main())",
        "run", str(scenario), "--duration", str(RUN_S),
        "--speed", "2", "--workers", "2", "--fidelity-budget", "1000", "--out", str(run_dir),
        "--quiet", "--web", "--web-control", "--metrics",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT)})
    try:
        await _wait_file(run_dir / "web.json", proc, 60.0)
        urls = json.loads((run_dir / "web.json").read_text())
        server = urlsplit(urls["web"]).netloc
        requests: list[str] = []
        async with chromium(tmp_path / "chromium-profile") as context:
            page = await context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            await page.goto(urls["web"])
            await page.wait_for_function("window.orbitmeshState.updates >= 3", timeout=30_000)
            meta = await page.evaluate("fetch('/api/meta').then(r => r.json())")
            state = await page.evaluate("window.orbitmeshState")
            n_sats = meta["n_satellites"]
            assert state["satellites"] == n_sats == 64
            assert state["links"] > n_sats  # +Grid ISLs alone are 2 per satellite
            canvas = await page.get_attribute("#map", "data-satellites")
            assert canvas == str(n_sats)
            flow = meta["flows"][0]
            path = state["flows"][0]["path"]
            ids = meta["node_ids"]
            assert [ids[path[0]], ids[path[-1]]] == [flow["source"], flow["destination"]]
            assert state["paths_drawn"] >= 1
            assert state["fidelity"]["budget_ms"] == 1000.0  # the budget in force, not 2 ms
            await page.screenshot(path=str(run_dir / "web-screenshot.png"))
            # A fault from the page, through the control topic: the run lists it.
            reply = await page.evaluate(
                "orbitmeshInject(JSON.stringify({cmd: 'fault', kind: 'node_down', "
                "node: 'svalbard', for_s: 10, id: 'from-the-page'}))")
            assert reply["ok"], reply
            run_id, url = locate(str(run_dir), None)
            listing = await list_faults(run_id, url)
            listing_t_s = float(listing["t_s"])
            assert "from-the-page" in [f["id"] for f in listing["faults"]]
            await page.wait_for_function(
                "window.orbitmeshState.faults.some(f => f.id === 'from-the-page' && f.active)",
                timeout=10_000)
            # ... and marks the failed station (the snapshot's fault effects).
            await page.wait_for_function(
                f"{ids.index('svalbard')} in window.orbitmeshState.down", timeout=10_000)
            await page.screenshot(path=str(run_dir / "web-screenshot-fault.png"))
            bad = await page.evaluate(
                "orbitmeshInject(JSON.stringify({cmd: 'fault', kind: 'node_down', "
                "node: 'atlantis'}))")
            assert not bad["ok"] and "atlantis" in bad["error"]
            resources = await page.evaluate(
                "performance.getEntriesByType('resource').map(e => e.name)")
            live_text = await asyncio.to_thread(_fetch, urls["metrics"])
            watched = await _watch_frame(run_dir)
        assert watched["seq"] >= 0 and len(watched["sat_lat_deg"]) == n_sats
        assert requests and resources
        foreign = [u for u in requests + resources if urlsplit(u).netloc != server]
        assert not foreign, f"the page asked other hosts: {foreign}"
        assert _samples(live_text)  # the live endpoint parses too
        _out, err = await asyncio.wait_for(proc.communicate(), RUN_S + 60.0)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    summary = json.loads((run_dir / "summary.json").read_text())
    samples = _samples((run_dir / "metrics.prom").read_text())
    for flow in summary["flows"]:
        labels = {"run": run_id, "flow": flow["name"], "source": flow["source"],
                  "destination": flow["destination"]}
        key = tuple(sorted(labels.items()))
        assert samples[("orbitmesh_flow_offered_frames_total", key)] == flow["offered"] > 0
        assert samples[("orbitmesh_flow_delivered_frames_total", key)] == flow["delivered"]
        for reason, n in flow["dropped"].items():
            dropped = tuple(sorted({**labels, "reason": reason}.items()))
            assert samples[("orbitmesh_flow_dropped_frames_total", dropped)] == n
        assert samples[("orbitmesh_flow_latency_seconds_count", key)] == flow["delivered"]
    telemetry = tuple(sorted({"run": run_id, "flow": "telemetry", "source": "",
                              "destination": ""}.items()))
    assert samples[("orbitmesh_flow_offered_frames_total", telemetry)] == \
        summary["telemetry"]["generated"]
    assert samples[("orbitmesh_flow_delivered_frames_total", telemetry)] == \
        summary["telemetry"]["delivered"]
    assert samples[("orbitmesh_ticks_total", (("run", run_id),))] >= RUN_S  # one per tick
    assert (run_dir / "web-screenshot.png").stat().st_size > 10_000
    # The same run played back from its trace: one frame per tick, the same totals at the end.
    replay = Replay(run_dir, quiet=True)
    assert len(replay.frames) == int(RUN_S / meta["tick_s"]) + 1
    last = json.loads(replay.frame_at(RUN_S))
    assert [f["offered"] for f in last["flows"]] == [f["offered"] for f in summary["flows"]]
    during = json.loads(replay.frame_at(listing_t_s + 1.0))
    assert any(f["id"] == "from-the-page" and f["active"] for f in during["faults"])
    assert last["flows"][0]["path"]  # routes recomputed from the recorded links
    assert last["fidelity"]["ok"] == summary["fidelity"]["ok"]
    assert last["fidelity"]["text"].startswith("run verdict: fidelity:")
    await _drive_replay(replay, tmp_path / "replay-profile", run_dir / "replay-screenshot.png")


async def _drive_replay(replay: Replay, profile: Path, screenshot: Path) -> None:
    """The replay page: the slider moves the map to the frame of its time."""
    def frame(query: dict[str, list[str]]) -> bytes:
        return replay.frame_at(float(query.get("t", ["0"])[0]))

    async with WebServer("127.0.0.1", 0, meta=replay.meta, frame=frame) as web, \
            chromium(profile) as context:
        page = await context.new_page()
        await page.goto(web.url)
        await page.wait_for_function("window.orbitmeshState.updates >= 1", timeout=20_000)
        assert await page.is_visible("#slider")
        target_s = replay.times_s[len(replay.times_s) // 2]
        await page.eval_on_selector("#slider", f"s => {{ s.value = {target_s}; "
                                    "s.dispatchEvent(new Event('input')); }")
        await page.wait_for_function(f"window.orbitmeshState.t_s === {target_s}",
                                     timeout=10_000)
        await page.screenshot(path=str(screenshot))


async def _watch_frame(run_dir: Path) -> dict[str, Any]:
    """`orbitmesh watch RUN` beside the run: its first frame."""
    watch = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from orbitmesh.run.cli import main; raise SystemExit(main())",
        "watch", str(run_dir), "--web", stderr=asyncio.subprocess.PIPE, cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT)})
    try:
        assert watch.stderr is not None
        line = (await asyncio.wait_for(watch.stderr.readline(), 30.0)).decode()
        assert line.startswith("web: "), line
        for _ in range(50):
            with contextlib.suppress(OSError):
                frame: dict[str, Any] = json.loads(await asyncio.to_thread(
                    _fetch, line.split()[1] + "api/frame"))
                return frame
            await asyncio.sleep(0.2)
        raise AssertionError("orbitmesh watch served no frame")
    finally:
        watch.terminate()
        await watch.wait()


async def test_shell1_map_draws_every_satellite_and_link(tmp_path: Path) -> None:
    """Frames of starlink-shell1 (1,584 satellites) pushed once a second are all drawn.

    The render time per update is printed, not asserted: bench/map_render.py measures it.
    """
    scenario = load_scenario(PROJECT / "scenarios" / "starlink-shell1.yaml")
    topology = build_topology(scenario)
    view = RunView(topology, "shell1")
    engine = TickEngine(topology)
    meta = static_meta(topology, "shell1", control=False, replay=False)
    async with WebServer("127.0.0.1", 0, meta=lambda: meta,
                         frame=lambda q: view.frame_json()) as web, \
            chromium(Path(tempfile.mkdtemp(dir=tmp_path))) as context:
        page = await context.new_page()
        await page.goto(web.url)
        await page.wait_for_function("document.getElementById('title')"
                                     ".textContent.includes('shell1')", timeout=20_000)
        for k in range(6):
            tick = engine.step(k * scenario.tick_s)
            view.snapshot = decode_state(encode_state(k, tick.state, tick.routes),
                                         topology.n_nodes)
            web.hub.publish(view.frame_json())
            await asyncio.sleep(1.0)
        await page.wait_for_function("window.orbitmeshState.updates >= 5", timeout=20_000)
        state = await page.evaluate("window.orbitmeshState")
        await page.screenshot(path=str(tmp_path / "shell1.png"))
    renders = state["renders"]
    assert state["satellites"] == topology.n_satellites
    assert state["links"] == len(tick.state.a)
    assert len(renders) >= 5 and all(ms > 0 for ms in renders)
    print(f"\nshell-1 map: {len(renders)} updates, {state['links']} links, render mean "
          f"{sum(renders) / len(renders):.1f} ms, max {max(renders):.1f} ms")
