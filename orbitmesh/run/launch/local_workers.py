"""A local run's worker processes: how one is started, waited on and reaped (by PID, never by name).

Each worker is ``python -m nodes.worker`` with its log in ``<run>/worker-w<k>[-g<gen>].log`` and
its broker URL (with its password) in a 0600 file under ``<run>/broker/``; the launcher records
the PIDs in ``<run>/pids.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from broker.credentials import write_private
from broker.url import BrokerURL
from orbitmesh.errors import RunError

_PROJECT_ROOT = str(Path(__file__).resolve().parents[3])


async def spawn_worker(run_dir: Path, run_id: str, worker: int, generation: int,
                       urls: list[BrokerURL], *, workers: int, duration_s: float, speed: float,
                       placement: str) -> tuple[str, asyncio.subprocess.Process]:
    """Start worker ``worker`` (its ``generation``-th start); its tag in pids.json, its process."""
    tag = f"w{worker}" + (f"-g{generation}" if generation else "")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PROJECT_ROOT, env.get("PYTHONPATH", "")]
                                        ).rstrip(os.pathsep)
    log = (run_dir / f"worker-{tag}.log").open("wb")
    # The URL carries this worker's password: a 0600 file, never argv (ps shows argv).
    broker_file = write_private(run_dir / "broker" / f"worker-{worker}.url", "".join(
        u.to_text(show_password=True) + "\n" for u in urls))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.worker", "--scenario",
        str(run_dir / "scenario.yaml"), "--run-id", run_id, "--broker-file",
        str(broker_file), "--worker", str(worker), "--workers",
        str(workers), "--out", str(run_dir), "--duration", str(duration_s),
        "--speed", str(speed), "--generation", str(generation), "--placement",
        placement, stdout=log, stderr=log, env=env)
    log.close()
    return tag, proc


async def wait_for(condition: Callable[[], bool], procs: dict[int, asyncio.subprocess.Process],
                   timeout_s: float, what: str, stop: asyncio.Event | None,
                   quiet: bool = False) -> None:
    """Wait until ``condition()`` holds; a worker's exit, ``stop`` or the timeout raise RunError
    (``quiet``: return instead, also once every worker has exited)."""
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


async def reap(procs: dict[int, asyncio.subprocess.Process], grace_s: float = 5.0) -> None:
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

