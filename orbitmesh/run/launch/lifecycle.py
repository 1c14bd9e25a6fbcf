"""Ending runs without losing results: `orbitmesh stop`, `orbitmesh fetch`, a graceful `down`.

A run is found the same way by every command: a run directory (``docker.json`` for `up` runs,
``launcher.json`` for local runs, ``run.json`` for a compose/stack run whose results are
bind-mounted), ``runs/<id>``, or a run id with containers, services, networks or volumes
labelled ``orbitmesh.run=<id>`` on this docker daemon. Anything else is refused (exit 2).

Stopping is always the graceful stop the run already has for Ctrl-C: SIGTERM to a local
launcher (found by the PID it recorded, checked against the process's start time so that a
reused PID is never signalled), SIGINT to a container run's controller (found by label). Both
stop the clock, let frames in flight land, collect the workers' final counts and write
``summary.json``; the command waits for that and says where it is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orbitmesh.errors import InputError, RunError
from orbitmesh.run.files import atomic_write

LAUNCHER_FILE = "launcher.json"
"""The local launcher's PID, its start time and the machine's boot id (see record_launcher)."""
STOP_WAIT_S = 90.0
"""How long `stop` waits for the summary before it says the run did not finish."""
POLL_S = 0.2


@dataclass(frozen=True)
class RunRef:
    """Where a run lives: its id, its directory on this machine (if any), and its backend."""

    run_id: str
    run_dir: Path | None
    backend: str
    """``local``, ``docker`` (`orbitmesh up`), or ``labelled`` (compose/stack: found by label)."""


# --- the local launcher's record ----------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None
    when there is no such process or it has exited (a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "comm", which may hold spaces: field 3 on
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _pid_namespace() -> str:
    """This process's PID namespace (a launcher in a container has another one)."""
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return ""


def _launcher_record(run_dir: Path) -> dict[str, Any] | None:
    """launcher.json when it was written in this machine's PID namespace, else None."""
    try:
        body = json.loads((run_dir / LAUNCHER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("boot_id") != _boot_id() or (
            body.get("pid_ns") != _pid_namespace()):
        return None
    return body


def record_launcher(run_dir: Path) -> None:
    """Write ``launcher.json``: this process's PID with what tells it apart from a reused PID."""
    pid = os.getpid()
    atomic_write(run_dir / LAUNCHER_FILE, json.dumps(
        {"pid": pid, "start_ticks": _start_ticks(pid), "boot_id": _boot_id(),
         "pid_ns": _pid_namespace()}), durable=False)


def live_launcher(run_dir: Path) -> int | None:
    """The PID of the run's launcher if that very process still runs on this machine."""
    body = _launcher_record(run_dir) or {}
    try:
        pid, ticks = int(body["pid"]), body.get("start_ticks")
    except (KeyError, TypeError, ValueError):
        return None
    # The start time tells the launcher apart from a later process that got its PID.
    return pid if ticks is not None and _start_ticks(pid) == ticks else None


# --- finding a run --------------------------------------------------------------------------------


def find_run(run: str, client: Any | None = None) -> RunRef:
    """A run directory, ``runs/<id>``, or a labelled run id; InputError (exit 2) otherwise."""
    from orbitmesh.run.launch.control import RUN_FILE
    from orbitmesh.run.launch.docker import RECORD
    from orbitmesh.run.launch.labelled import resolve

    for path in (Path(run), Path("runs") / run):
        if (path / RECORD).is_file():
            body = json.loads((path / RECORD).read_text())
            return RunRef(str(body["run_id"]), path.resolve(), "docker")
        if _launcher_record(path) is not None:  # not one written inside a container
            return RunRef(_run_id_of(path, RUN_FILE), path.resolve(), "local")
        if (path / RUN_FILE).is_file():  # a compose/stack run's bind-mounted results
            return RunRef(_run_id_of(path, RUN_FILE), path.resolve(), "labelled")
    if client is None:
        raise InputError(f"{run}: not a run directory (no docker.json, launcher.json or "
                         "run.json) and no docker daemon to look the run id up on")
    run_id, run_dir = resolve(client, run)
    return RunRef(run_id, run_dir, "labelled")


def _run_id_of(path: Path, run_file: str) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads((path / run_file).read_text())["run_id"])
    return path.resolve().name


def client_or_none() -> Any | None:
    """A docker client, or None when no daemon answers."""
    from orbitmesh.run.launch.image import docker_client

    try:
        return docker_client()
    except RunError:
        return None


# --- stop -----------------------------------------------------------------------------------------


def stop(ref: RunRef, client: Any | None, say: Any, wait_s: float = STOP_WAIT_S) -> int:
    """Stop a run gracefully and wait for its summary; 0 when the summary is there."""
    if ref.backend == "local":
        if ref.run_dir is None:  # pragma: no cover - local runs always have a directory
            raise InputError(f"run {ref.run_id}: no run directory")
        pid = live_launcher(ref.run_dir)
        if pid is None:
            return _already_over(ref)
        say(f"run {ref.run_id}: SIGTERM to its launcher (pid {pid}); it drains, collects the "
            "final counts and writes the summary")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while _start_ticks(pid) is not None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return _summary_said(ref, still_running=_start_ticks(pid) is not None)
    if client is None:
        raise RunError(f"run {ref.run_id} runs as containers and the docker daemon is not "
                       "reachable; start dockerd (or set DOCKER_HOST) and try again")
    from orbitmesh.run.launch.docker import role_container

    controller = role_container(client, ref.run_id, "controller")
    if controller is None or controller.status not in ("running", "paused"):
        return _already_over(ref, controller)
    say(f"run {ref.run_id}: SIGINT to {controller.name}; it drains, collects the final counts "
        "and writes the summary")
    if controller.status == "paused":
        controller.unpause()
    controller.kill("SIGINT")
    try:
        code = int(controller.wait(timeout=wait_s)["StatusCode"])
    except Exception:  # requests' ReadTimeout and the like: the controller did not finish
        return _summary_said(ref, still_running=True)
    _wait_for_supervisor(client, ref, wait_s)
    say(f"the controller exited with code {code}")
    return _summary_said(ref, controller=controller)


def is_going(ref: RunRef, client: Any | None) -> bool:
    """True while the run's launcher (local) or controller container (docker) runs."""
    if ref.backend == "local":
        return ref.run_dir is not None and live_launcher(ref.run_dir) is not None
    from orbitmesh.run.launch.docker import role_container

    controller = None if client is None else role_container(client, ref.run_id, "controller")
    return controller is not None and controller.status in ("running", "paused")


def graceful_first(ref: RunRef, client: Any | None, say: Any) -> None:
    """Before `down` removes anything: stop a run still going, so that it writes its summary."""
    if is_going(ref, client):
        say(f"run {ref.run_id} is still going: stopping it gracefully first (--kill: "
            "the hard way)")
        stop(ref, client, say)


def _wait_for_supervisor(client: Any, ref: RunRef, wait_s: float) -> None:
    """A detached run's supervisor adds its fault records to the summary after the controller."""
    from orbitmesh.run.launch.docker import role_container

    supervisor = role_container(client, ref.run_id, "supervisor")
    if supervisor is not None and supervisor.status == "running":
        with contextlib.suppress(Exception):
            supervisor.wait(timeout=wait_s)


def _already_over(ref: RunRef, controller: Any | None = None) -> int:
    print(f"run {ref.run_id} is not running")
    return _summary_said(ref, controller=controller)


def _summary_said(ref: RunRef, *, still_running: bool = False,
                  controller: Any | None = None) -> int:
    if still_running:
        print(f"run {ref.run_id} did not finish within {STOP_WAIT_S:g} s; `orbitmesh down "
              f"{ref.run_id} --kill` ends it the hard way (no summary)", file=sys.stderr)
        return 1
    if ref.run_dir is not None and (ref.run_dir / "summary.json").is_file():
        print(f"summary: {ref.run_dir / 'summary.json'}")
        return 0
    if controller is not None and _has_summary_inside(controller, ref.run_id):
        print(f"summary written in the run's volume; `orbitmesh fetch {ref.run_id}` copies "
              "the results out")
        return 0
    print(f"run {ref.run_id}: no summary.json was written; see the controller's log "
          f"(`docker logs` or the run directory's logs/)", file=sys.stderr)
    return 1


def _has_summary_inside(container: Any, run_id: str) -> bool:
    """True when a (stopped or running) container's run directory holds summary.json."""
    directory = _container_run_dir(container, run_id)
    if directory is None:
        return False
    with contextlib.suppress(Exception):
        container.get_archive(f"{directory}/summary.json")
        return True
    return False


def _container_run_dir(container: Any, run_id: str) -> str | None:
    """The run directory a container of the run writes to (its ORBITMESH_RUN_DIR)."""
    env = container.attrs.get("Config", {}).get("Env") or []
    for item in env:
        if item.startswith("ORBITMESH_RUN_DIR="):
            return str(item.split("=", 1)[1])
    return None


# --- fetch ----------------------------------------------------------------------------------------


def fetch(ref: RunRef, client: Any | None, out: Path | None, image: str | None = None) -> Path:
    """Copy a run's results to ``out`` (default ``runs/<id>``); the directory written."""
    if ref.run_dir is not None and ref.run_dir.is_dir():  # a bind mount or a local run
        if out is None or out.resolve() == ref.run_dir:
            return ref.run_dir  # already on this machine
        shutil.copytree(ref.run_dir, out, dirs_exist_ok=True)
        return out
    if client is None:
        raise RunError(f"run {ref.run_id}: its results are in a docker volume and the docker "
                       "daemon is not reachable")
    target = out or Path("runs") / ref.run_id
    source = _source_container(client, ref, image)
    helper = source is None
    if source is None:
        source = _helper_container(client, ref, image)
    try:
        directory = _container_run_dir(source, ref.run_id)
        if directory is None:
            raise RunError(f"{source.name} does not say where the run's results are "
                           "(no ORBITMESH_RUN_DIR)")
        stream, _stat = source.get_archive(directory)
        _extract(b"".join(stream), target, Path(directory).name)
    finally:
        if helper:
            with contextlib.suppress(Exception):
                source.remove(force=True)
    return target


def _source_container(client: Any, ref: RunRef, _image: str | None) -> Any | None:
    from orbitmesh.run.launch.docker import role_container

    for role in ("controller", "supervisor", "worker"):
        found = role_container(client, ref.run_id, role)
        if found is not None and _container_run_dir(found, ref.run_id):
            return found
    return None


def _helper_container(client: Any, ref: RunRef, image: str | None) -> Any:
    """A stopped, labelled container that mounts the run's volume (removed after the copy)."""
    from orbitmesh.run.launch.compose import RUN_ROOT
    from orbitmesh.run.launch.docker import LABEL_ROLE, LABEL_RUN
    from orbitmesh.run.launch.image import default_image, require_image

    volumes = client.volumes.list(filters={"label": f"{LABEL_RUN}={ref.run_id}"})
    if not volumes:
        raise InputError(f"run {ref.run_id}: no container and no volume of it is left on this "
                         "docker daemon; nothing to fetch")
    tag = image or default_image(client)
    require_image(client, tag)
    return client.containers.create(
        tag, ["true"], labels={LABEL_RUN: ref.run_id, LABEL_ROLE: "fetch"},
        volumes={volumes[0].name: {"bind": RUN_ROOT, "mode": "ro"}},
        environment={"ORBITMESH_RUN_DIR": f"{RUN_ROOT}/{ref.run_id}"})


def _extract(archive: bytes, target: Path, top: str) -> None:
    """Unpack docker's tar of ``<top>/...`` into ``target`` (no links out, no absolute paths)."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.parts and name.parts[0] == top:
                member.name = str(Path(*name.parts[1:])) if len(name.parts) > 1 else "."
        tar.extractall(target, filter="data")


# --- the CLI ------------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Add `stop` and `fetch` to the CLI's subparsers."""
    s = sub.add_parser("stop", help="end a run gracefully (drain, final count, summary), any "
                       "backend")
    s.add_argument("run", help="run directory or run id")
    s.add_argument("--wait", type=float, default=STOP_WAIT_S,
                   help=f"seconds to wait for the summary (default {STOP_WAIT_S:g})")
    s.set_defaults(handler=stop_cmd)
    f = sub.add_parser("fetch", help="copy a run's results out (a compose run's volume, or a "
                       "run directory elsewhere)")
    f.add_argument("run", help="run directory or run id")
    f.add_argument("-o", "--out", help="directory to write (default: runs/<run id>)")
    f.add_argument("--image", help="image for the helper container when none of the run's "
                   "containers is left (default: this source's build, else latest)")
    f.set_defaults(handler=fetch_cmd)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def stop_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh stop RUN`."""
    client = None if is_local(args.run) else client_or_none()
    return stop(find_run(args.run, client), client, _say, args.wait)


def fetch_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh fetch RUN [-o DIR]`."""
    client = None if is_local(args.run) else client_or_none()
    ref = find_run(args.run, client)
    path = fetch(ref, client, Path(args.out) if args.out else None, args.image)
    summary = path / "summary.json"
    print(f"results of {ref.run_id}: {path}" + ("" if summary.is_file() else
                                                 " (no summary.json among them)"))
    return 0


def is_local(run: str) -> bool:
    """True when RUN is a local run's directory (it holds launcher.json)."""
    return any(_launcher_record(p) is not None and not (p / "docker.json").is_file()
               for p in (Path(run), Path("runs") / run))
