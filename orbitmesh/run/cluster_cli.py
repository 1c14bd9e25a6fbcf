"""``orbitmesh broker cluster up|down``: a local NATS cluster (MQTT gateway) for experiments.

``up`` starts M nats-server members on loopback, detached, records their PIDs in
``DIR/cluster.json`` and prints one ``--broker`` per member to pass to ``orbitmesh run``;
``down`` stops the members recorded there (by PID). The cluster is an open loopback broker:
no users, no ACL.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXIT_OK = 0


def add_parser(sub: Any) -> None:
    """Register ``broker cluster up|down`` on the CLI's sub-command parser."""
    b = sub.add_parser("broker", help="brokers for runs: a local NATS cluster (cluster up|down)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bs = b.add_subparsers(dest="broker_command", required=True)
    c = bs.add_parser("cluster", help="a local NATS cluster with its MQTT gateway")
    cs = c.add_subparsers(dest="cluster_command", required=True)
    up = cs.add_parser("up", help="start M members on loopback and print their --broker URLs")
    up.add_argument("--members", type=int, default=3, help="cluster members (default 3)")
    up.add_argument("--dir", required=True,
                    help="directory for the members' configs, JetStream stores and logs")
    up.add_argument("--name", default="orbitmesh", help="cluster name (default orbitmesh)")
    up.set_defaults(handler=_up)
    down = cs.add_parser("down", help="stop the members recorded in DIR/cluster.json")
    down.add_argument("--dir", required=True, help="the directory given to `cluster up`")
    down.set_defaults(handler=_down)


def _up(args: argparse.Namespace) -> int:
    from broker.nats_cluster import NatsCluster

    cluster = NatsCluster(Path(args.dir), args.members, name=args.name, detach=True)
    urls = cluster.start()
    for i, (url, pid) in enumerate(zip(urls, cluster.pids, strict=True)):
        print(f"member {i}: {url} (pid {pid})")
    print("run with: orbitmesh run SCENARIO " + " ".join(f"--broker {u}" for u in urls))
    print(f"stop with: orbitmesh broker cluster down --dir {args.dir}")
    return EXIT_OK


def _down(args: argparse.Namespace) -> int:
    from broker.nats_cluster import stop_recorded

    stopped = stop_recorded(Path(args.dir))
    print(f"stopped {len(stopped)} member(s): {' '.join(map(str, stopped)) or 'none running'}")
    return EXIT_OK
