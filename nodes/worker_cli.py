"""The worker process's entry point: arguments, the MQTT connection, signals, the way out.

``python -m nodes.worker --scenario S --run-id R --broker-file F --worker K --workers N --out D``
(nodes/worker.py hands its ``__main__`` here).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from broker.client import MqttTransport
from broker.lifetime import die_with_parent, exit_if_orphaned
from broker.url import resolve_broker_urls
from nodes.event_loop import precise_loop
from nodes.gc_tuning import settle_heap
from nodes.worker import Worker
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.errors import OrbitmeshError
from orbitmesh.protocol.messages import WorkerStatus
from orbitmesh.protocol.wire import Topics

log = logging.getLogger("orbitmesh.worker")
EXIT_GRACE_S = 5.0
"""Wall seconds a finished worker waits for its broker connection to close before it leaves."""


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nodes.worker")
    p.add_argument("--scenario", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--broker", help="broker URL without a password (a password belongs in "
                   "--broker-file or ORBITMESH_BROKER_URL, not on the command line)")
    p.add_argument("--broker-file", help="file (mode 0600) holding the broker URL with this "
                   "worker's credentials (one per line: a cluster's members, its own first)")
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float)
    p.add_argument("--speed", type=float)
    p.add_argument("--generation", default="auto",
                   help="restart count of this worker; 'auto' (default) counts the stats files "
                   "earlier incarnations left in --out (a restarted container finds its own)")
    p.add_argument("--placement", default="blocks", help="blocks, planes or chunks:N")
    return p.parse_args(argv)


def _generation(value: str, out: Path, worker: int) -> int:
    if value != "auto":
        return int(value)
    taken = [0 if p.stem == f"stats-w{worker}" else int(p.stem.rsplit("-g", 1)[1])
             for p in out.glob(f"stats-w{worker}.json")]
    taken += [int(p.stem.rsplit("-g", 1)[1]) for p in out.glob(f"stats-w{worker}-g*.json")]
    return max(taken) + 1 if taken else 0


async def amain(args: argparse.Namespace) -> int:
    """Run one worker until the controller says finish (or a signal arrives)."""
    args.generation = _generation(str(args.generation), Path(args.out), args.worker)
    scenario = load_scenario(args.scenario)
    topology = build_topology(scenario)
    duration = args.duration or scenario.duration_s
    speed = args.speed or scenario.speed
    topics = Topics(args.run_id)
    will_body = WorkerStatus(args.worker, "lost", args.generation).encode()
    # A --broker-file may list a cluster's members, this worker's own first: it fails over.
    transport = MqttTransport(resolve_broker_urls(args.broker, args.broker_file),
                              client_id=f"orbitmesh-{args.run_id}-w{args.worker}-g{args.generation}",
                              will=(topics.worker_status(args.worker), will_body, True),
                              reconnect=True)
    async with transport:
        worker = Worker(topology, worker=args.worker, workers=args.workers, run_id=args.run_id,
                        transport=transport, out_dir=Path(args.out), duration_s=duration,
                        speed=speed, generation=args.generation, placement=args.placement)
        loop = asyncio.get_running_loop()
        # Ctrl-C reaches the whole process group: the launcher drains and finishes the run, so
        # workers ignore SIGINT and leave on the controller's word (or on SIGTERM).
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGTERM, worker.finish)
        settle_heap()  # set-up is done: full collections skip what it built (nodes/gc_tuning.py)
        await worker.run()
        # The stats are written and the final status sent: closing the connection is all that is
        # left. If the broker died with the launcher, that close has been seen to hang; a worker
        # must not outlive its run for it.
        leave = threading.Timer(EXIT_GRACE_S, _leave_now)
        leave.daemon = True
        leave.start()
    return 0


def _leave_now() -> None:
    log.warning("the broker connection did not close within %.0f s of the end; leaving",
                EXIT_GRACE_S)
    logging.shutdown()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Process entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(levelname)s "
                        "%(message)s")
    args = _parse(argv)
    parent = os.getppid()
    if die_with_parent():  # a launcher killed with -9 takes its workers with it
        exit_if_orphaned(parent)
    try:
        with asyncio.Runner(loop_factory=precise_loop) as runner:
            return runner.run(amain(args))
    except OrbitmeshError as exc:
        print(f"worker {args.worker}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
