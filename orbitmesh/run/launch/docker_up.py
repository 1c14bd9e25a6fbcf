"""`orbitmesh up` with the docker backend, from the containers' start to the exit code.

In the foreground `up` starts the run's containers, supervises the run
(:class:`~orbitmesh.run.launch.supervise.Supervisor`) until its controller container exits, then
finishes: the supervisor's actions merged into the summary, logs saved, containers down, the
table printed. With ``--detach`` the supervisor runs in a container of its own
(`orbitmesh supervise RUN`, :func:`supervise_detached`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from orbitmesh.errors import RunError
from orbitmesh.run.launch.docker import (
    DockerRun,
    Progress,
    UpOptions,
    run_containers,
    start,
    start_supervisor,
)
from orbitmesh.run.launch.labelled import down, save_logs
from orbitmesh.run.launch.supervise import Supervisor
from orbitmesh.run.report import format_summary


def up(client: Any, opts: UpOptions, image: str, say: Progress) -> int:
    """`orbitmesh up`: start the run's containers, supervise it, print the summary; exit code."""
    run = start(client, opts, image, say)
    if opts.detach:
        start_supervisor(client, run)
        say(f"run {run.run_id} started in the background; results in {run.run_dir}")
        say(f"  orbitmesh status {run.run_dir}    orbitmesh down {run.run_dir}")
        return 0
    try:
        code, supervisor = asyncio.run(_foreground(client, run, say, opts.progress))
    except BaseException:
        save_logs(client, run.run_id, run.run_dir)
        if not opts.keep:
            down(client, run.run_id)
        raise
    return finish(client, run, supervisor, code, keep=opts.keep, say=say)


async def _foreground(client: Any, run: DockerRun, say: Progress,
                      progress: bool) -> tuple[int, Supervisor]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(client, run, say, progress=progress)
    return await supervisor.supervise(stop), supervisor


def supervise_detached(client: Any, run: DockerRun, connect_url: str | None,
                       say: Progress, progress: bool) -> int:
    """`orbitmesh supervise RUN`: the supervisor of a detached run (it runs in a container)."""
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        supervisor = Supervisor(client, run, say, connect_url=connect_url, progress=progress)
        code = await supervisor.supervise(stop)
        supervisor.merge_into_summary()
        return code

    return asyncio.run(main())


def finish(client: Any, run: DockerRun, supervisor: Supervisor, code: int, *, keep: bool,
           say: Progress) -> int:
    """After the controller exits: summary, logs, containers down; the exit code."""
    summary = supervisor.merge_into_summary()
    for container in run_containers(client, run.run_id):
        with contextlib.suppress(Exception):
            container.stop(timeout=10)
    save_logs(client, run.run_id, run.run_dir)
    if not keep:
        removed = down(client, run.run_id)
        say(f"removed {len(removed['containers'])} containers"
            + (f", network {', '.join(removed['networks'])}" if removed["networks"] else ""))
    if summary is None:
        say(f"the controller exited with code {code} and wrote no summary; see "
            f"{run.run_dir / 'logs'}")
        # on_exit: stop before the clock started: the controller had nothing to summarise
        stopped = supervisor.endpoints is not None and supervisor.endpoints.stopped_run
        return 1 if stopped else code or 1
    print(format_summary(summary))
    for fault_id, record in supervisor.actions.items():
        done = ", ".join(a["action"] + (" FAILED" if "error" in a else "")
                         for a in record["actions"])
        print(f"container fault {fault_id} ({record['kind']}, worker {record['worker']}): "
              f"{done or 'not carried out'}")
    print(f"results: {run.run_dir}")
    return code


def load_run(run_dir: Path) -> DockerRun:
    """The DockerRun recorded in a run directory."""
    try:
        return DockerRun.load(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{run_dir}: cannot read its docker.json ({exc})") from exc
