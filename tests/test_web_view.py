"""The live map's data path without sockets: RunView, heartbeat counters, metrics, the server.

Messages are built with the same codecs the controller and workers use (``encode_state`` of a
tick the core engine computed, ``WorkerStatus.encode``), so the view is tested against the run's
own formats; the browser and a real run are in tests/test_web.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodes.heartbeat import latency_le
from nodes.stats import FlowStats
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.histogram import EXACT_SAMPLES, RATIO, Histogram
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.errors import RunError
from orbitmesh.protocol.messages import (
    LATENCY_BOUNDS_MS,
    FaultInfo,
    FaultListing,
    FlowProgress,
    MessageError,
    WorkerProgress,
    WorkerStatus,
)
from orbitmesh.protocol.state import encode_state
from orbitmesh.protocol.transport import Message
from orbitmesh.run.metrics import metrics_text, registry_for
from orbitmesh.run.web.server import WebServer, parse_listen
from orbitmesh.run.web.view import RunView

DEMO = Path(__file__).resolve().parent.parent / "scenarios" / "demo.yaml"


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    topology = build_topology(load_scenario(DEMO))
    tick = TickEngine(topology).step(0.0)
    return topology, tick


def _status(worker: int, flows: tuple[FlowProgress, ...], state: str = "running") -> Message:
    status = WorkerStatus(worker, state, progress=WorkerProgress(flows=flows))  # type: ignore[arg-type]
    return Message(f"orbitmesh/r/worker/{worker}/status", status.encode())


def test_frame_draws_what_the_snapshot_says(demo) -> None:  # type: ignore[no-untyped-def]
    topology, tick = demo
    view = RunView(topology, "r")
    assert view.handle(Message("orbitmesh/r/state", encode_state(0, tick.state, tick.routes)))
    frame = view.frame()
    assert len(frame["sat_lat_deg"]) == topology.n_satellites
    assert len(frame["links"]) == 3 * len(tick.state.a)
    live = {tuple(sorted(p)) for p in zip(tick.state.a.tolist(), tick.state.b.tolist(),
                                          strict=True)}
    flow = topology.scenario.traffic[0]
    path = frame["flows"][0]["path"]
    assert path[0] == topology.node(flow.source) and path[-1] == topology.node(flow.destination)
    # Every hop of the highlighted path is a live link of the tick.
    assert all(tuple(sorted(hop)) in live for hop in itertools.pairwise(path))
    # Positions are the satellites' sub-points: 1,000 km shells stay within the inclination.
    assert max(abs(v) for v in frame["sat_lat_deg"]) <= 53.0 + 0.5


def test_flow_totals_sum_the_workers_and_feed_the_metrics(demo) -> None:  # type: ignore[no-untyped-def]
    topology, tick = demo
    view = RunView(topology, "r")
    le = tuple(range(len(LATENCY_BOUNDS_MS)))
    view.handle(_status(0, (FlowProgress(0, 10, 0, (("queue", 1),), 0.0, (0,) * len(le)),)))
    view.handle(_status(1, (FlowProgress(0, 0, 8, (("fault", 2),), 400.0, le),)))
    view.handle(Message("orbitmesh/r/faults", FaultListing(3.0, (FaultInfo(
        "f1", "node_down", "live", 1.0, None, True, (("node", "tokyo"),)),)).encode()))
    view.handle(Message("orbitmesh/r/state", encode_state(0, tick.state, tick.routes)))
    text = metrics_text(registry_for(view)).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    labels = (("destination", "brussels"), ("flow", "tokyo-brussels"), ("run", "r"),
              ("source", "tokyo"))
    assert samples[("orbitmesh_flow_offered_frames_total", labels)] == 10
    assert samples[("orbitmesh_flow_delivered_frames_total", labels)] == 8
    assert samples[("orbitmesh_flow_dropped_frames_total",
                    tuple(sorted((*labels, ("reason", "fault")))))] == 2
    assert samples[("orbitmesh_flow_latency_seconds_sum", labels)] == pytest.approx(0.4)
    assert samples[("orbitmesh_flow_latency_seconds_count", labels)] == 8
    assert samples[("orbitmesh_faults_active", (("run", "r"),))] == 1
    isl = samples[("orbitmesh_links_up", (("link_class", "isl"), ("run", "r")))]
    assert isl == int((tick.state.kind == 0).sum())
    assert view.frame()["faults"][0]["id"] == "f1"


def test_a_late_generation_does_not_overwrite_a_restarted_worker(demo) -> None:  # type: ignore[no-untyped-def]
    view = RunView(demo[0], "r")
    new = WorkerStatus(0, "running", generation=1, progress=WorkerProgress(offered=5))
    old = WorkerStatus(0, "lost", generation=0)
    view.handle(Message("orbitmesh/r/worker/0/status", new.encode()))
    view.handle(Message("orbitmesh/r/worker/0/status", old.encode()))
    assert view.workers[0].state == "running"
    view.handle(Message("orbitmesh/r/state", b"not msgpack"))
    assert view.malformed == 1


def test_latency_counts_exact_and_folded() -> None:
    rng = np.random.default_rng(7)
    for n in (50, EXACT_SAMPLES * 3):
        values = rng.lognormal(3.0, 1.2, n)
        hist = Histogram()
        hist.extend(values.tolist())
        counts, total = latency_le(hist)
        truth = [(values <= b).sum() for b in LATENCY_BOUNDS_MS]
        if n < EXACT_SAMPLES:
            assert list(counts) == truth
        else:  # a folded bucket counts below a bound when its upper edge is: within one bucket
            for bound, c in zip(LATENCY_BOUNDS_MS, counts, strict=True):
                assert (values <= bound / RATIO).sum() <= c <= (values <= bound).sum()
        assert total == pytest.approx(values.sum())


def test_heartbeat_flows_round_trip_and_old_heartbeats_still_decode() -> None:
    fs = FlowStats()
    fs.offered, fs.delivered = 3, 2
    fs.latency_ms.extend([3.0, 40.0])
    from nodes.heartbeat import flow_progress

    status = WorkerStatus(0, "running", progress=WorkerProgress(offered=3,
                                                               flows=flow_progress({0: fs})))
    assert WorkerStatus.decode(status.encode()) == status
    old = json.loads(status.encode())
    del old["flows"]
    assert WorkerStatus.decode(json.dumps(old).encode()).progress.flows == ()  # type: ignore[union-attr]
    old["flows"] = [[0, 1, 1, {"queue": -1}, 0.0, []]]
    with pytest.raises(MessageError, match="dropped"):
        WorkerStatus.decode(json.dumps(old).encode())


def test_parse_listen() -> None:
    assert parse_listen(None) == ("127.0.0.1", 0)
    assert parse_listen("") == ("127.0.0.1", 0)
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    with pytest.raises(RunError, match="HOST:PORT"):
        parse_listen("localhost:http")
    with pytest.raises(RunError, match="outside"):
        parse_listen("127.0.0.1:70000")


async def _get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_server_serves_its_own_files_and_refuses_what_it_must() -> None:
    async with WebServer("127.0.0.1", 0, meta=lambda: {"x": 1}, frame=lambda q: None) as web:
        page = await _get(web.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert page.startswith(b"HTTP/1.1 200") and b"/static/app.js" in page
        # No script, style or map file refers to any other host.
        assert b"http" not in page.split(b"\r\n\r\n", 1)[1]
        atlas = await _get(web.port, b"GET /static/vendor/land-110m.json HTTP/1.1\r\n\r\n")
        assert json.loads(atlas.split(b"\r\n\r\n", 1)[1])["type"] == "Topology"
        escape = await _get(web.port, b"GET /static/../view.py HTTP/1.1\r\n\r\n")
        assert escape.startswith(b"HTTP/1.1 404")
        refused = await _get(web.port, b"POST /api/control HTTP/1.1\r\nContent-Length: 2\r\n"
                                       b"\r\n{}")
        assert refused.startswith(b"HTTP/1.1 403") and b"--web-control" in refused
        none_yet = await _get(web.port, b"GET /api/frame HTTP/1.1\r\n\r\n")
        assert none_yet.startswith(b"HTTP/1.1 503")


def test_docs_and_dashboard_name_exactly_the_metrics_emitted(demo) -> None:  # type: ignore[no-untyped-def]
    import re

    topology, tick = demo
    view = RunView(topology, "r")
    view.handle(_status(0, (FlowProgress(0, 1, 1, (("queue", 1),), 5.0,
                                         (1,) * len(LATENCY_BOUNDS_MS)),)))
    view.handle(Message("orbitmesh/r/state", encode_state(0, tick.state, tick.routes)))
    text = metrics_text(registry_for(view, tick_compute_ms=lambda: [1.0])).decode()
    emitted = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    root = Path(__file__).resolve().parent.parent / "docs"
    documented = set(re.findall(r"^\| `(orbitmesh_[a-z_]+)`", (root / "observability.md")
                                .read_text(), re.M))
    def family(name: str) -> str:
        return re.sub(r"_(bucket|count|sum)$", "", name)

    assert documented == {family(n) for n in emitted}
    dashboard = json.loads((root / "grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"]
            for m in re.findall(r"orbitmesh_[a-z_]+", t["expr"])}
    assert used <= emitted, used - emitted  # every query names a real series
    assert {family(n) for n in used} == documented  # and the dashboard shows every family


def test_a_satellite_sgp4_could_not_place_is_null_not_nan() -> None:
    from orbitmesh.run.web.view import _finite_list

    assert _finite_list(np.array([1.234, np.nan, -0.006])) == [1.23, None, -0.01]
    assert json.dumps(_finite_list(np.array([np.inf])), allow_nan=False) == "[null]"


def test_sparkline_points_are_ratios_and_means_over_recent_ticks(demo) -> None:  # type: ignore[no-untyped-def]
    topology, tick = demo
    view = RunView(topology, "r")
    state = encode_state(0, tick.state, tick.routes)
    for k in range(1, 8):  # 10 offered per tick; all delivered (50 ms each) until tick 3, then none
        good = min(k, 3)
        view.handle(_status(0, (FlowProgress(0, 10 * k, 10 * good, (), 500.0 * good, ()),)))
        view.handle(Message("orbitmesh/r/state", state))
    points = list(view.history[0])
    assert len(points) == 7
    assert points[2][1:] == (1.0, 50.0)
    # The last point covers ticks 3..7 (WINDOW_TICKS = 5): 10 of 50 delivered, not 30 of 70.
    assert points[-1][1] == pytest.approx(10 / 50) and points[-1][2] == pytest.approx(50.0)


def test_cli_refuses_bad_listen_addresses_and_run_directories(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from orbitmesh.run.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", str(DEMO), "--web", "localhost:http"])
    assert exc.value.code == 2 and "HOST:PORT" in capsys.readouterr().err
    assert main(["watch", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err
    assert main(["watch", str(tmp_path), "--replay"]) == 2
    assert "no links.msgpack" in capsys.readouterr().err


def test_the_budget_in_force_comes_from_the_run_not_only_the_scenario(demo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from orbitmesh.core.scenario import Fidelity
    from orbitmesh.run.web.live import _recorded_budget

    view = RunView(demo[0], "r")
    view.handle(Message("orbitmesh/r/worker/0/status", WorkerStatus(
        0, "running", progress=WorkerProgress(late_ms=30.0)).encode()))
    assert not view.fidelity()["ok"]  # the scenario's 2 ms
    (tmp_path / "web.json").write_text(json.dumps({"fidelity": Fidelity(
        budget_ms=1000.0).model_dump()}))
    budget = _recorded_budget(tmp_path)
    assert budget is not None and budget.budget_ms == 1000.0
    view.budget = budget
    assert view.fidelity()["ok"]
    assert _recorded_budget(tmp_path / "nowhere") is None
