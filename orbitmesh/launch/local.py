"""Run a scenario live on this machine: broker, controller (in this process) and N worker processes.

Every process this module starts is recorded by PID in ``<run>/pids.json`` and stopped by PID; the
embedded broker likewise. Ctrl-C / SIGTERM stop the clock, tell the workers to finish (they write
their stats), and the summary is still written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker import check_broker
from broker.embedded import EmbeddedBroker
from broker.url import BrokerURL, parse_broker_url
from nodes.transport import MqttTransport
from orbitmesh import __version__
from orbitmesh.controller import Controller
from orbitmesh.errors import RunError
from orbitmesh.report import build_summary, format_summary, percentiles, write_summary
from orbitmesh.scenario import load_scenario
from orbitmesh.topology import Topology, build_topology
from orbitmesh.wire import Topics

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READY_TIMEOUT_S = 60.0
DRAIN_S = 1.5
"""Wall seconds after the last scenario second for frames in flight to land."""
FINISH_TIMEOUT_S = 20.0


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


@dataclass
class RunResult:
    """Where the run wrote its results and what they say."""

    run_dir: Path
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when the conservation check held."""
        return bool(self.summary["conservation_ok"])


def run_cli(args: argparse.Namespace) -> int:
    """`orbitmesh run`: run, print the summary table, exit non-zero if conservation broke."""
    opts = RunOptions(Path(args.scenario), args.duration, args.speed, args.workers, args.broker,
                      Path(args.out) if args.out else None, args.run_id, not args.quiet)
    result = run(opts)
    print(format_summary(result.summary))
    print(f"results: {result.run_dir}")
    return 0 if result.ok else 1


def run(opts: RunOptions) -> RunResult:
    """Run a scenario to the end (or to Ctrl-C) and return its summary."""
    scenario = load_scenario(opts.scenario)
    topology = build_topology(scenario)
    duration = opts.duration_s or scenario.duration_s
    speed = opts.speed or scenario.speed
    workers = opts.workers or os.cpu_count() or 1
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (opts.out or Path("runs") / f"{scenario.name}-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(opts.scenario, run_dir / "scenario.yaml")
    run_id = opts.run_id or re.sub(r"[^A-Za-z0-9_.-]", "-", run_dir.name)
    broker: EmbeddedBroker | None = None
    if opts.broker == "embedded":
        (run_dir / "broker").mkdir(exist_ok=True)
        broker = EmbeddedBroker(workdir=run_dir / "broker")
        url = broker.start()
        broker_label = f"embedded {broker.engine} on {url.address}"
    else:
        url = parse_broker_url(opts.broker)
        asyncio.run(check_broker(url))
        broker_label = str(url)
    try:
        return asyncio.run(_run(topology, run_dir, run_id, url, broker_label, workers,
                                duration, speed, opts.progress))
    finally:
        if broker is not None:
            broker.stop()


async def _run(topology: Topology, run_dir: Path, run_id: str, url: BrokerURL, broker_label: str,
               workers: int, duration: float, speed: float, progress: bool) -> RunResult:
    topics = Topics(run_id)
    scenario = topology.scenario
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = datetime.now(UTC)
    status: dict[int, dict[str, Any]] = {}
    procs: dict[int, asyncio.subprocess.Process] = {}
    async with MqttTransport(url, client_id=f"orbitmesh-{run_id}-controller",
                             reconnect=True) as transport:
        await transport.subscribe(topics.worker_status_all)
        listener = asyncio.create_task(_listen(transport, status), name="controller.status")
        controller = Controller(topology, transport, topics, duration_s=duration, speed=speed,
                                out_dir=run_dir)
        try:
            procs = await _spawn(run_dir, run_id, url, workers, duration, speed)
            await _wait_for(lambda: all(status.get(k, {}).get("state") in ("ready", "running")
                                        for k in range(workers)),
                            procs, READY_TIMEOUT_S, "every worker to report ready", stop)
            printer = _Progress(status, workers, duration, enabled=progress)
            ticker = asyncio.create_task(controller.run(printer.update, stop), name="controller")
            stopper = asyncio.create_task(stop.wait(), name="controller.stop")
            await asyncio.wait({ticker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if ticker.done():
                ticker.result()
                await asyncio.sleep(DRAIN_S)
            else:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            printer.done()
        finally:
            transport.publish(topics.control, json.dumps({"cmd": "finish"}).encode())
            await transport.flush()
            await _wait_for(lambda: all(status.get(k, {}).get("state") in ("done", "lost")
                                        for k in procs), procs, FINISH_TIMEOUT_S,
                            "every worker to finish", None, quiet=True)
            await _reap(procs)
            controller.close()
            # Leave no retained messages behind on a shared broker.
            for topic in (topics.clock, topics.state,
                          *(topics.worker_status(k) for k in range(workers))):
                transport.publish(topic, b"", retain=True)
            await transport.flush()
            listener.cancel()
    links = {"handovers": controller.handovers,
             "route_changes": controller.engine.route_changes_total,
             "ticks": len(controller.tick_compute_ms),
             "tick_compute_ms": percentiles(controller.tick_compute_ms, (50, 99))}
    meta = {"id": run_id, "scenario": scenario.name, "scenario_file": str(scenario.source),
            "seed": scenario.seed, "speed": speed, "duration_s": duration, "workers": workers,
            "broker": broker_label, "started": started.isoformat(),
            "ended": datetime.now(UTC).isoformat(), "interrupted": stop.is_set(),
            "versions": _versions()}
    summary = build_summary(run_dir, scenario, meta, links, workers)
    write_summary(run_dir, summary)
    return RunResult(run_dir, summary)


async def _listen(transport: MqttTransport, status: dict[int, dict[str, Any]]) -> None:
    async for batch in transport.batches():
        for message in batch:
            if not message.payload:
                continue
            with contextlib.suppress(ValueError, KeyError):
                body = json.loads(message.payload)
                status[int(body["worker"])] = body


async def _spawn(run_dir: Path, run_id: str, url: BrokerURL, workers: int, duration: float,
                 speed: float) -> dict[int, asyncio.subprocess.Process]:
    procs: dict[int, asyncio.subprocess.Process] = {}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PROJECT_ROOT,
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for k in range(workers):
        log = (run_dir / f"worker-{k}.log").open("wb")
        procs[k] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodes.worker", "--scenario", str(run_dir / "scenario.yaml"),
            "--run-id", run_id, "--broker", url.to_text(show_password=True), "--worker", str(k),
            "--workers", str(workers), "--out", str(run_dir), "--duration", str(duration),
            "--speed", str(speed), stdout=log, stderr=log, env=env)
        log.close()
    (run_dir / "pids.json").write_text(json.dumps({str(k): p.pid for k, p in procs.items()}))
    return procs


async def _wait_for(condition: Any, procs: dict[int, asyncio.subprocess.Process],
                    timeout_s: float, what: str, stop: asyncio.Event | None,
                    quiet: bool = False) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        dead = [k for k, p in procs.items() if p.returncode is not None]
        if dead and not quiet:
            raise RunError(f"worker {dead[0]} exited with code {procs[dead[0]].returncode} while "
                           f"waiting for {what}; see worker-{dead[0]}.log in the run directory")
        if dead and quiet and all(p.returncode is not None for p in procs.values()):
            return
        if stop is not None and stop.is_set():
            raise RunError(f"interrupted while waiting for {what}")
        if time.monotonic() > deadline:
            if quiet:
                return
            raise RunError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _reap(procs: dict[int, asyncio.subprocess.Process], grace_s: float = 5.0) -> None:
    """Wait for the workers; SIGTERM then SIGKILL the ones (by PID) that linger."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs.values() if p.returncode is None]
        if not alive:
            return
        for p in alive:
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in alive)), grace_s)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"orbitmesh": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "sgp4", "aiomqtt", "paho-mqtt", "msgpack"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


class _Progress:
    """The live progress line (scenario time, frames/s, deliveries, drops)."""

    def __init__(self, status: dict[int, dict[str, Any]], workers: int, duration: float,
                 enabled: bool) -> None:
        self.status = status
        self.workers = workers
        self.duration = duration
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = (time.monotonic(), 0)
        self._printed = 0.0

    def update(self, t_s: float) -> None:
        """Print the progress line (at most twice a second; every 10 s when not a terminal)."""
        now = time.monotonic()
        if not self.enabled or now - self._printed < (0.5 if self.tty else 10.0):
            return
        self._printed = now
        s = [self.status.get(k, {}) for k in range(self.workers)]
        hops = sum(x.get("hops", 0) for x in s)
        rate = (hops - self._last[1]) / max(1e-6, now - self._last[0])
        self._last = (now, hops)
        line = (f"t={t_s:7.1f}/{self.duration:g} s  {rate:8.0f} frame-hops/s  "
                f"offered {sum(x.get('offered', 0) for x in s)}  "
                f"delivered {sum(x.get('delivered', 0) for x in s)}  "
                f"dropped {sum(x.get('dropped', 0) for x in s)}  "
                f"on board {sum(x.get('held_on_board', 0) for x in s)}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def done(self) -> None:
        """End the progress line."""
        if self.enabled and self.tty:
            print(file=sys.stderr)
