"""Users' containers at IP endpoint nodes: start them beside the workers, watch them, remove them.

A container named by ``endpoints.ip[].container`` runs with no network of its own
(``network_mode="none"``); the worker hosting its node moves the node's TUN into the container's
network namespace (nodes/endpoints.py, :func:`netns.attach_container`). Name resolution comes from
``extra_hosts`` (every IP endpoint of the run by node name). Each container carries the run's
label (``orbitmesh.run=<run id>``), so `orbitmesh down` and the end of the run remove it by label.

The launcher starts them after ``endpoints.json`` is written (their names are on record first)
and before the workers, then adds each one's id and PID to the record. A container that fails to
start or exits during the run is written to ``<run>/endpoint-containers.json`` with its logs'
last lines, said on stderr, and the run goes on or stops as its ``on_exit`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orbitmesh.errors import RunError, ScenarioError
from orbitmesh.run.endpoint_report import CONTAINERS_FILE, container_records
from orbitmesh.run.files import atomic_write
from orbitmesh.run.launch.labels import LABEL_ROLE, LABEL_RUN, LABEL_RUN_DIR
from orbitmesh.run.launch.netns import PLAN_FILE, read_plan

EXITS_FILE = CONTAINERS_FILE
ROLE = "endpoint"
LOG_LINES = 10
"""Last lines of a container's log kept in the report."""
POLL_S = 0.5
"""How often the launcher looks at its endpoint containers (docker has no cheap wait-for-any)."""


class EndpointContainers:
    """The endpoint containers of one run; :meth:`start` makes them, :meth:`remove` ends them."""

    def __init__(self, client: Any, run_dir: Path, plan: dict[str, Any]) -> None:
        self.client = client
        self.run_dir = run_dir
        self.plan = plan
        self.entries = [e for e in plan["ip"] if "container" in e]
        self.containers: dict[str, Any] = {}
        self.report: dict[str, dict[str, Any]] = {}
        self.scenario_s: Callable[[], float | None] | None = None
        self.stopped_run = False
        """True once a container with ``on_exit: stop`` exited and :meth:`watch` set stop."""

    @classmethod
    def start(cls, run_dir: Path) -> EndpointContainers | None:
        """Start every container on the run's endpoint record (None when there are none)."""
        plan = read_plan(run_dir)
        if plan is None or not any("container" in e for e in plan["ip"]):
            return None
        from orbitmesh.run.launch.image import docker_client

        self = cls(docker_client(), run_dir, plan)
        self._check_images()
        try:
            for e in self.entries:
                self._start_one(e)
        except BaseException:
            self.remove()
            raise
        atomic_write(run_dir / PLAN_FILE, json.dumps(plan, indent=1), durable=True)
        self._write()
        return self

    @classmethod
    def resume(cls, client: Any, run_dir: Path) -> EndpointContainers | None:
        """The endpoint containers another process started for ``run_dir``, to watch them.

        `orbitmesh up` starts them before its worker containers and its supervisor watches them
        (None when the run has none).
        """
        from docker.errors import NotFound

        plan = read_plan(run_dir)
        if plan is None or not any("container" in e for e in plan["ip"]):
            return None
        self = cls(client, run_dir, plan)
        self.report = {r["node"]: r for r in container_records(run_dir)}
        for e in self.entries:
            cid = e["container"].get("id")
            if cid and self.report.get(e["node"], {}).get("state") == "running":
                with contextlib.suppress(NotFound):  # gone already: poll reports it
                    self.containers[e["node"]] = client.containers.get(cid)
        return self

    def _check_images(self) -> None:
        from docker.errors import ImageNotFound

        for e in self.entries:
            image = e["container"]["image"]
            try:
                self.client.images.get(image)
            except ImageNotFound:
                raise ScenarioError(
                    f"endpoints.ip (node {e['node']}).container.image: {image!r} is not on this "
                    "docker daemon; orbitmesh never pulls: `docker pull` or build it first "
                    "(the offline image: `orbitmesh image build --offline`)") from None

    def _start_one(self, e: dict[str, Any]) -> None:
        from docker.errors import APIError

        spec = e["container"]
        hosts = [f"{x['node']}:{x[key]}" for x in self.plan["ip"] for key in ("ipv4", "ipv6")]
        labels = {LABEL_RUN: self.plan["run_id"], LABEL_RUN_DIR: str(self.run_dir),
                  LABEL_ROLE: ROLE, "orbitmesh.node": e["node"]}
        try:
            container = self.client.containers.run(
                spec["image"], spec["command"], name=spec["name"], detach=True,
                network_mode="none", hostname=e["node"], extra_hosts=hosts,
                environment=spec["environment"], volumes=spec["volumes"], labels=labels,
                # docker turns IPv6 off in a container it gives no IPv6 network; the TUN has both
                sysctls={"net.ipv6.conf.all.disable_ipv6": "0",
                         "net.ipv6.conf.default.disable_ipv6": "0"})
        except APIError as exc:
            text = str(exc.explanation or exc)
            tail = self._logs(spec["name"])
            self._exited(e, state="failed", exit_code=None, error=text, logs=tail)
            if spec["on_exit"] == "stop":
                raise RunError(f"endpoint container {spec['name']} ({e['node']}) failed to "
                               f"start: {text}" + _indent(tail)) from exc
            return
        container.reload()
        spec["id"], spec["pid"] = container.id, int(container.attrs["State"]["Pid"])
        self.containers[e["node"]] = container
        self.report[e["node"]] = {"node": e["node"], "container": spec["name"],
                                  "image": spec["image"], "state": "running",
                                  "on_exit": spec["on_exit"]}

    def _logs(self, name: str) -> list[str]:
        with contextlib.suppress(Exception):
            raw = self.client.containers.get(name).logs(tail=LOG_LINES)
            return [str(line) for line in raw.decode(errors="replace").splitlines()]
        return []

    def _exited(self, e: dict[str, Any], *, state: str, exit_code: int | None,
                error: str | None = None, logs: list[str] | None = None,
                at_s: float | None = None) -> None:
        spec = e["container"]
        entry = {"node": e["node"], "container": spec["name"], "image": spec["image"],
                 "state": state, "on_exit": spec["on_exit"], "exit_code": exit_code,
                 "at_s": at_s, "error": error, "logs_tail": logs or []}
        self.report[e["node"]] = entry
        how = (f"failed to start: {error}" if state == "failed" else
               f"exited with code {exit_code} " + (f"at t={at_s:g} s" if at_s is not None
                                                   else "before the run's clock started"))
        then = "the run stops (on_exit: stop)" if spec["on_exit"] == "stop" else \
            "the run goes on without it (on_exit: ignore)"
        print(f"error: endpoint container {spec['name']} at {e['node']} {how}; {then}"
              + _indent(entry["logs_tail"]), file=sys.stderr)
        self._write()

    def _write(self) -> None:
        atomic_write(self.run_dir / EXITS_FILE,
                     json.dumps(sorted(self.report.values(), key=lambda r: r["node"]), indent=1),
                     durable=False)

    def poll(self) -> list[str]:
        """Look at every running container once; the on_exit of each one found stopped."""
        from docker.errors import NotFound

        actions = []
        for e in self.entries:
            if self.report.get(e["node"], {}).get("state") != "running":
                continue
            container = self.containers.get(e["node"])
            try:
                if container is None:
                    raise NotFound("removed before it was watched")
                container.reload()
                status = container.status
                code = container.attrs["State"].get("ExitCode")
            except NotFound:
                status, code = "removed", None
            if status in ("running", "created", "restarting"):
                continue
            at_s = self.scenario_s() if self.scenario_s is not None else None
            self._exited(e, state="exited", exit_code=code,
                         logs=self._logs(e["container"]["name"]), at_s=at_s)
            actions.append(e["container"]["on_exit"])
        return actions

    async def watch(self, stop: asyncio.Event, scenario_s: Callable[[], float | None]) -> None:
        """Until cancelled: report containers that exit; set ``stop`` for ``on_exit: stop``.

        ``scenario_s``: the run's scenario time, None before its clock starts.
        """
        self.scenario_s = scenario_s
        while True:
            actions = await asyncio.to_thread(self.poll)
            if "stop" in actions:
                self.stopped_run = True
                stop.set()
            await asyncio.sleep(POLL_S)

    def remove(self) -> list[str]:
        """Remove the run's endpoint containers (by its label); their names."""
        return remove_labelled(self.client, self.plan["run_id"])


def remove_labelled(client: Any, run_id: str) -> list[str]:
    """Remove every endpoint container labelled with ``run_id``; their names."""
    from docker.errors import APIError, NotFound

    removed = []
    for container in client.containers.list(
            all=True, filters={"label": [f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}={ROLE}"]}):
        try:
            container.remove(force=True, v=True)
        except NotFound:
            continue
        except APIError as exc:
            raise RunError(f"cannot remove container {container.name}: {exc}") from exc
        removed.append(container.name)
    return removed


def kill_labelled(client: Any, run_id: str) -> list[str]:
    """SIGKILL the running endpoint containers of ``run_id`` (kept, with their logs, for
    `orbitmesh down`); their names. A user's program gets no grace at the run's end: the local
    backend removes them by force too, and ``sleep infinity`` would hold ``docker stop`` 10 s."""
    from docker.errors import APIError

    killed = []
    for container in client.containers.list(
            filters={"label": [f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}={ROLE}"]}):
        with contextlib.suppress(APIError):  # exited meanwhile
            container.kill()
            killed.append(container.name)
    return killed


def remove_recorded(run_dir: Path) -> list[str]:
    """Remove the endpoint containers of a run directory's record (`orbitmesh down`)."""
    plan = read_plan(run_dir)
    if plan is None or not any("container" in e for e in plan["ip"]):
        return []
    from orbitmesh.run.launch.image import docker_client

    return remove_labelled(docker_client(), plan["run_id"])


def container_state(name: str) -> str:
    """A container's state as docker says it (``running``, ``exited``, ...), or ``absent``."""
    try:
        from orbitmesh.run.launch.image import docker_client

        return str(docker_client().containers.get(name).status)
    except Exception:  # no daemon, no container: both mean nothing is running there
        return "absent"


def _indent(lines: list[str]) -> str:
    return "".join(f"\n  | {line}" for line in lines)
