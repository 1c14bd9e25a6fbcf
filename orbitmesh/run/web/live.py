"""The live map and /metrics of a running run: one MQTT watcher, one or two HTTP listeners.

:class:`LiveServices` is an async context manager: it connects to the run's broker as the
operator (``run.json`` and the credential file it names, like ``orbitmesh fault``), feeds a
:class:`RunView`, pushes one frame per tick to the page's event stream, and on exit writes the
last scrape to ``<run>/metrics.prom`` so that the final figures outlive the endpoint. Its tasks
live in one TaskGroup and are cancelled and awaited on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.client import MqttTransport
from orbitmesh.core.scenario import Fidelity
from orbitmesh.errors import RunError
from orbitmesh.protocol.messages import ControlCommand, ControlError, MessageError
from orbitmesh.protocol.transport import Transport
from orbitmesh.run.files import atomic_write
from orbitmesh.run.launch.control import RUN_FILE, locate
from orbitmesh.run.web.server import WebServer, parse_listen
from orbitmesh.run.web.view import RunView, static_meta

METRICS_FILE = "metrics.prom"
WEB_FILE = "web.json"
"""Where a run records the page and metrics URLs (tests and `orbitmesh watch` users read it)."""


@dataclass(frozen=True)
class LiveOptions:
    """What to serve: ``web``/``metrics`` are HOST:PORT ("" = 127.0.0.1 and a free port)."""

    web: str | None = None
    web_control: bool = False
    metrics: str | None = None

    @property
    def wanted(self) -> bool:
        """True when anything is to be served."""
        return self.web is not None or self.metrics is not None


def _recorded_budget(run_dir: Path) -> Fidelity | None:
    """The budget the run recorded in web.json (a --fidelity-budget override), if any."""
    try:
        return Fidelity.model_validate(json.loads((run_dir / WEB_FILE).read_text())["fidelity"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def scenario_of(run_dir: Path) -> Path:
    """The scenario a run directory runs (its own copy, else what run.json names)."""
    copy = run_dir / "scenario.yaml"
    if copy.is_file():
        return copy
    info = json.loads((run_dir / RUN_FILE).read_text())
    return Path(str(info["scenario"]))


class LiveServices:
    """Serve the page and/or /metrics for the run in ``run_dir`` (see the module docstring)."""

    def __init__(self, run_dir: Path, options: LiveOptions, *,
                 tick_compute_ms: Callable[[], Sequence[float]] | None = None,
                 transport: Transport | None = None, quiet: bool = False,
                 record: bool = True, fidelity: Fidelity | None = None) -> None:
        self.run_dir = run_dir
        self.options = options
        self.run_id, self.url = locate(str(run_dir), None)
        self.view = RunView.from_scenario(scenario_of(run_dir), self.run_id)
        self.view.budget = fidelity or _recorded_budget(run_dir) or self.view.budget
        self._tick_compute_ms = tick_compute_ms
        self._transport = transport
        self._quiet = quiet
        self._record = record
        """Write web.json and metrics.prom into the run directory (the run's own server only:
        a watcher must not overwrite the run's files)."""
        self.web: WebServer | None = None
        self.metrics: WebServer | None = None
        self.control_errors: list[str] = []
        self.ended = asyncio.Event()
        """Set when the run has finished (its clock was cleared)."""
        self._stack = contextlib.AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveServices:
        from orbitmesh.run.metrics import metrics_text, registry_for

        stack = self._stack
        try:
            transport = self._transport or MqttTransport(
                self.url, client_id=f"orbitmesh-{self.run_id}-web-{os.getpid()}", reconnect=True)
            self.transport = await stack.enter_async_context(transport)
            await self.transport.subscribe(*self.view.subscriptions(),
                                           self.view.topics.control_error)
            registry = registry_for(self.view, tick_compute_ms=self._tick_compute_ms)
            urls: dict[str, Any] = {}
            if self.options.web is not None:
                host, port = parse_listen(self.options.web)
                control = self._send if self.options.web_control else None
                self.web = await stack.enter_async_context(WebServer(
                    host, port, meta=self._meta, frame=self._frame, control=control,
                    metrics=lambda: metrics_text(registry)))
                urls["web"] = self.web.url
            if self.options.metrics is not None:
                host, port = parse_listen(self.options.metrics)
                self.metrics = await stack.enter_async_context(WebServer(
                    host, port, meta=self._meta, frame=lambda q: None,
                    metrics=lambda: metrics_text(registry)))
                urls["metrics"] = self.metrics.url + "metrics"
            self._registry = registry
            self._group = await stack.enter_async_context(asyncio.TaskGroup())
            self._pump = self._group.create_task(self._feed(), name="web.feed")
        except BaseException:
            await stack.aclose()
            raise
        if self._record:  # the budget in force too, for `orbitmesh watch` (run.json lacks it)
            atomic_write(self.run_dir / WEB_FILE, json.dumps(
                {**urls, "fidelity": self.view.budget.model_dump()}, indent=2), durable=False)
        if not self._quiet:
            for what, url in urls.items():
                print(f"{what}: {url}", file=sys.stderr, flush=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        from orbitmesh.run.metrics import metrics_text

        if self._pump is not None:
            self._pump.cancel()
        try:
            with contextlib.suppress(OSError):
                if self._record:
                    atomic_write(self.run_dir / METRICS_FILE,
                                 metrics_text(self._registry).decode(), durable=False)
        finally:
            await self._stack.aclose()

    def _meta(self) -> dict[str, Any]:
        return static_meta(self.view.topology, self.run_id,
                           control=self.options.web_control, replay=False)

    def _frame(self, query: dict[str, list[str]]) -> bytes | None:
        return self.web.hub.latest if self.web is not None else None

    async def _feed(self) -> None:
        try:
            await self._feed_batches()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the page must never take the run down with it
            print(f"warning: live map/metrics stopped following run {self.run_id}: {exc}",
                  file=sys.stderr, flush=True)

    async def _feed_batches(self) -> None:
        topics = self.view.topics
        async for batch in self.transport.batches():
            tick = False
            for message in batch:
                if message.topic == topics.control_error:
                    with contextlib.suppress(MessageError):
                        self.control_errors.append(ControlError.decode(message.payload).error)
                    continue
                tick |= self.view.handle(message)
            if self.view.ended:
                self.ended.set()
            if tick and self.web is not None:
                self.web.hub.publish(self.view.frame_json())

    async def _send(self, body: bytes) -> str | None:
        """Publish a page's command on the control topic; an error text if it is refused here."""
        try:
            command = ControlCommand.decode(body)
        except MessageError as exc:
            return str(exc)
        if command.cmd not in ("fault", "clear", "list"):
            return f"the page may send fault, clear or list, not {command.cmd!r}"
        before = len(self.control_errors)
        self.transport.publish(self.view.topics.control, body)
        await self.transport.flush()
        # The controller validates against the scenario and answers on control/error.
        for _ in range(20):
            await asyncio.sleep(0.05)
            if len(self.control_errors) > before:
                return self.control_errors[-1]
        return None


async def watch(run_dir: Path, options: LiveOptions) -> None:
    """`orbitmesh watch RUN`: serve until the run ends (its clock is cleared) or Ctrl-C."""
    if not (run_dir / RUN_FILE).is_file():
        raise RunError(f"{run_dir}: no {RUN_FILE}; give the directory of a running run "
                       "(or a finished one with --replay)")
    async with LiveServices(run_dir, options, record=False) as live:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waits = {asyncio.create_task(stop.wait(), name="watch.stop"),
                 asyncio.create_task(live.ended.wait(), name="watch.ended")}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if live.ended.is_set():
            print(f"run {live.run_id} has finished; its last figures are in "
                  f"{run_dir / METRICS_FILE}", file=sys.stderr, flush=True)
