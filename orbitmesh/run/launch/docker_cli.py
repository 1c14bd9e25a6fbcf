"""The container commands of the `orbitmesh` CLI: image, up, status, down, compose, supervise.

``add_parsers(sub)`` adds them to the CLI's subparsers and returns their handlers by command
name; each handler takes the parsed arguments and returns the exit code (errors are raised as
OrbitmeshError subclasses for the CLI to print).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orbitmesh.errors import BrokerError, RunError

if TYPE_CHECKING:
    from broker.url import BrokerURL

Handler = Callable[[argparse.Namespace], int]
STATUS_WAIT_S = 1.0
"""How long `orbitmesh status` listens for the workers' retained status messages."""


def add_parsers(sub: Any) -> dict[str, Handler]:
    """Add the container commands to ``sub`` (argparse subparsers); their handlers by name."""
    im = sub.add_parser("image", help="build the container image (orbitmesh image build --offline)")
    im_sub = im.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    b = im_sub.add_parser("build", help="build orbitmesh:<source hash> and orbitmesh:latest")
    b.add_argument("--offline", action="store_true",
                   help="no registry: Debian base from debootstrap, wheels made on this machine")
    b.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    b.add_argument("--cache-dir", help="pip cache for the wheels (default: pip's own)")
    b.add_argument("--keep", type=int, default=2,
                   help="older project images to keep (default 2; the rest are removed)")
    il = im_sub.add_parser("list", help="the orbitmesh images on this docker daemon")
    il.add_argument("--format", choices=("table", "json"), default="table",
                    help="table (default) or json (tags, id, created, size_mb per image)")

    u = sub.add_parser("up", help="run a scenario as containers (one per plane or N nodes)")
    u.add_argument("scenario")
    u.add_argument("--backend", choices=("docker",), default="docker",
                   help="container backend (docker, the only one so far)")
    u.add_argument("--nodes-per-container", type=int,
                   help="N nodes per worker container (default: one container per plane, plus "
                   "one for the ground)")
    u.add_argument("--duration", type=float, help="scenario seconds (default: the scenario's)")
    u.add_argument("--speed", type=float, help="scenario seconds per wall second")
    u.add_argument("-o", "--out", help="run directory (default: runs/<run id>)")
    u.add_argument("--run-id", help="run id (default: <scenario>-<UTC timestamp>)")
    u.add_argument("--image", help="image tag (default: this source's build, else latest)")
    u.add_argument("--network", choices=("host", "bridge"), default="host",
                   help="host (default; broker on 127.0.0.1) or a bridge network for the run")
    u.add_argument("--broker", help="use this broker (mqtt[s]://[user:pass@]host:port) instead "
                   "of a broker container (the URL reaches the containers in 0600 files)")
    u.add_argument("--broker-insecure", action="store_true",
                   help="broker container without per-run users and ACL (open to every local "
                   "process; said on stderr)")
    u.add_argument("--detach", action="store_true",
                   help="return once started (a supervisor container handles faults); "
                   "`orbitmesh down` later")
    u.add_argument("--keep", action="store_true",
                   help="leave the stopped containers for inspection (`orbitmesh down` later)")
    u.add_argument("--quiet", action="store_true", help="no progress lines")

    s = sub.add_parser("status", help="containers and workers of a container run")
    s.add_argument("run", help="run directory (holds docker.json) or run id")
    s.add_argument("--broker", help="broker URL with credentials (default: docker.json's)")
    s.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default) or json")

    d = sub.add_parser("down", help="stop a run still going gracefully, then remove its "
                       "services, containers, networks and endpoint namespaces (volumes with "
                       "--volumes)")
    d.add_argument("run", help="run directory (holds docker.json or endpoints.json) or run id")
    d.add_argument("--kill", action="store_true",
                   help="do not stop a run still going gracefully first (no summary)")
    d.add_argument("--volumes", action="store_true",
                   help="also remove the run's volumes (a compose run's results: "
                   "`orbitmesh fetch` them first)")

    c = sub.add_parser("compose", help="write a compose file (docker compose / stack deploy)")
    c.add_argument("scenario")
    c.add_argument("-o", "--out", "--output", dest="output", required=True,
                   help="compose file to write, e.g. "
                   "compose/demo.yml (its secrets go to compose/demo.secrets/)")
    c.add_argument("--broker", help="external broker URL: no broker service (a user:pass@ "
                   "in it reaches the services as secret files, never in a command line)")
    c.add_argument("--broker-insecure", action="store_true",
                   help="broker service without per-run users and ACL (open to anything on the "
                   "run's network; said on stderr and in the file)")
    c.add_argument("--tls", action="store_true",
                   help="the broker service speaks TLS only, with a certificate from a CA made "
                   "for this file (secrets beside it; port 8883)")
    c.add_argument("--image", default="orbitmesh:latest",
                   help="image tag of every service (default orbitmesh:latest)")
    c.add_argument("--nodes-per-container", type=int,
                   help="N nodes per worker service (default: one per plane, plus the ground)")
    c.add_argument("--duration", type=float, help="scenario seconds (default: the scenario's)")
    c.add_argument("--speed", type=float, help="scenario seconds per wall second")
    c.add_argument("--run-id", help="default run id (ORBITMESH_RUN_ID overrides it)")
    c.add_argument("--no-supervisor", action="store_true",
                   help="no supervisor service (it mounts the docker socket to act on faults)")
    c.add_argument("--swarm", action="store_true",
                   help="a stack file for `docker stack deploy` (overlay network, deploy "
                   "sections, results bind-mounted from --results)")
    c.add_argument("--results", default="runs",
                   help="--swarm: host directory for the run directories (default ./runs; "
                   "shared storage at the same path on every node for several nodes)")

    sv = sub.add_parser("supervise", help="carry out the container faults of a running run "
                        "(started by `up --detach` and by compose files)")
    sv.add_argument("run", nargs="?", help="run directory (holds docker.json)")
    sv.add_argument("--broker", help="broker URL to connect to (default: docker.json's)")
    sv.add_argument("--operator-file", help="the operator's credential (operator.json) to "
                    "connect with (a compose file's secret)")
    sv.add_argument("--run-id", help="without docker.json: the run id")
    sv.add_argument("--run-dir", help="without docker.json: the results directory")
    sv.add_argument("--workers", type=int, default=0, help="without docker.json: worker count")
    sv.add_argument("--placement", default="planes",
                    help="without docker.json: node placement (default planes)")
    sv.add_argument("--quiet", action="store_true", help="no progress lines")
    handlers: dict[str, Handler] = {"image": image_cmd, "up": up_cmd, "status": status_cmd,
                                    "down": down_cmd, "compose": compose_cmd,
                                    "supervise": supervise_cmd}
    for name, handler in handlers.items():
        sub.choices[name].set_defaults(handler=handler)
    return handlers


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def image_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh image build|list`."""
    from orbitmesh.run.launch import image, image_build

    client = image.docker_client()
    if args.image_command == "list":
        if args.format == "json":
            import json

            print(json.dumps([{"tags": list(found.tags), "id": found.short_id,
                               "created": str(found.attrs.get("Created", "")),
                               "size_mb": round(float(found.attrs.get("Size", 0)) / 1e6, 1)}
                              for found in image.project_images(client)], indent=2))
            return 0
        for found in image.project_images(client):
            print(f"{', '.join(found.tags) or found.short_id:<40} "
                  f"{str(found.attrs.get('Created', ''))[:19]}  "
                  f"{float(found.attrs.get('Size', 0)) / 1e6:6.0f} MB")
        return 0
    if not args.offline:
        raise RunError("only --offline builds are built by orbitmesh; with a registry, build "
                       "compose/Dockerfile: docker build -f compose/Dockerfile -t "
                       "orbitmesh:latest .")
    started = time.monotonic()
    result = image_build.build_offline(client, force=args.force, progress=_say,
                                       cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    removed = image.prune_project_images(client, keep=max(1, args.keep))
    if removed:
        _say(f"removed older images: {', '.join(removed)}")
    print(f"{result.tag} (also {image.LATEST}) ready in {time.monotonic() - started:.1f} s "
          f"(base {'built' if result.base_built else 'cached'}, project "
          f"{'built' if result.image_built else 'cached'})")
    return 0


def up_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh up SCENARIO --backend docker`."""
    from orbitmesh.run.launch.docker import UpOptions
    from orbitmesh.run.launch.docker_up import up
    from orbitmesh.run.launch.image import default_image, docker_client

    client = docker_client()
    image = args.image or default_image(client)
    opts = UpOptions(Path(args.scenario), args.duration, args.speed,
                     Path(args.out) if args.out else None, image, args.network, args.broker,
                     args.nodes_per_container, args.run_id, args.detach, not args.quiet,
                     args.keep, broker_insecure=args.broker_insecure)
    _say(f"image {image}")
    return up(client, opts, image, _say)


def status_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh status RUN`: containers by label, workers from their retained status."""
    from broker.url import parse_broker_url
    from orbitmesh.run.launch.docker import RECORD, nodes_per_worker
    from orbitmesh.run.launch.docker_secrets import as_operator
    from orbitmesh.run.launch.docker_up import load_run
    from orbitmesh.run.launch.image import docker_client
    from orbitmesh.run.launch.labelled import container_rows
    from orbitmesh.run.launch.lifecycle import client_or_none, find_run

    client = client_or_none()
    ref = find_run(args.run, client)  # an unknown run is bad input (exit 2), daemon or not
    client = client or docker_client()
    run_id, run_dir = ref.run_id, ref.run_dir
    rows = container_rows(client, run_id)
    workers: dict[int, dict[str, Any]] = {}
    nodes: dict[int, int] = {}
    if run_dir is not None and (run_dir / RECORD).is_file():
        run = load_run(run_dir)
        with contextlib.suppress(Exception):
            nodes = nodes_per_worker(run)
        url = parse_broker_url(args.broker) if args.broker else as_operator(
            run_dir, parse_broker_url(run.host_broker_url))
        if any(r["role"] == "broker" and r["state"] == "running" for r in rows) or args.broker:
            with contextlib.suppress(BrokerError, OSError):
                workers = asyncio.run(_worker_status(run_id, url))
    if args.format == "json":
        print(json.dumps({"run_id": run_id, "run_dir": str(run_dir) if run_dir else None,
                          "containers": rows, "workers": workers, "nodes": nodes}, indent=2))
        return 0
    print(f"run {run_id}" + (f" ({run_dir})" if run_dir else ""))
    if not rows:
        print("  no containers")
    now = time.time()
    for row in rows:
        line = f"  {row['name']:<44} {row['state']:<9}"
        if row["state"] == "exited":
            line += f" exit {row['exit_code']}"
        k = row["worker"]
        if k is not None:
            line += f" nodes {nodes.get(k, '?'):>3}"
            body = workers.get(k)
            if body:
                age = now - float(body.get("time", now))
                line += (f"  {body.get('state', '?'):<8} gen {body.get('generation', 0)}  "
                         f"heartbeat {age:5.1f} s ago  offered {body.get('offered', '-')} "
                         f"delivered {body.get('delivered', '-')}")
        print(line)
    return 0


async def _worker_status(run_id: str, url: BrokerURL) -> dict[int, dict[str, Any]]:
    from broker.client import MqttTransport
    from orbitmesh.protocol.wire import Topics

    topics = Topics(run_id)
    found: dict[int, dict[str, Any]] = {}
    async with MqttTransport(url, client_id=f"orbitmesh-status-{os.getpid()}") as transport:
        await transport.subscribe(topics.worker_status_all)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATUS_WAIT_S):
                async for batch in transport.batches():
                    for message in batch:
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            body = json.loads(message.payload)
                            found[int(body["worker"])] = body
    return found


def down_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh down RUN`: remove the run's labelled containers, networks and volumes, and
    the network namespaces on a run directory's endpoint record."""
    from orbitmesh.run.launch.docker import RECORD
    from orbitmesh.run.launch.image import docker_client
    from orbitmesh.run.launch.labelled import down, save_logs
    from orbitmesh.run.launch.lifecycle import client_or_none, find_run, graceful_first, is_local
    from orbitmesh.run.launch.netns import PLAN_FILE, cleanup_recorded

    if is_local(args.run):  # a local run still going ends with its summary, then its cleanup
        local = find_run(args.run)
        if not args.kill:
            graceful_first(local, None, _say)
        if not (Path(args.run) / PLAN_FILE).is_file():
            print(f"run {local.run_id}: a local run; nothing to remove")
            return 0
    if (Path(args.run) / PLAN_FILE).is_file() and not (Path(args.run) / RECORD).is_file():
        # a local run: namespaces by its record, never by pattern; containers by its label
        removed_ns = cleanup_recorded(Path(args.run))
        for name in removed_ns:
            print(f"removed namespace {name}")
        from orbitmesh.run.launch.endpoint_containers import remove_recorded

        for name in (gone := remove_recorded(Path(args.run))):
            print(f"removed container {name}")
        if not removed_ns and not gone:
            print(f"run {args.run}: no namespace left to remove")
        return 0
    # A docker run (`orbitmesh up`): its endpoint containers carry the run's label like the
    # rest, and go after the graceful stop below (they are the run's programs until its end).
    client = client_or_none()
    ref = find_run(args.run, client)  # an unknown run is bad input (exit 2), daemon or not
    client = client or docker_client()  # its error says what to do about the daemon
    if not args.kill:
        graceful_first(ref, client, _say)  # a run still going ends with its summary
    run_id, run_dir = ref.run_id, ref.run_dir
    if run_dir is not None and not (run_dir / "logs").is_dir():
        with contextlib.suppress(OSError):
            save_logs(client, run_id, run_dir)
    removed = down(client, run_id, volumes=args.volumes)
    kept = removed.pop("kept")
    for name in kept:
        print(f"kept volume {name} (it holds the results: `orbitmesh fetch {run_id}` copies "
              "them out, `orbitmesh down --volumes` removes it)")
    if not sum(len(v) for v in removed.values()):
        print(f"run {run_id}: nothing to remove")
        return 0
    for kind, names in removed.items():
        for name in names:
            print(f"removed {kind[:-1]} {name}")
    return 0


def compose_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh compose SCENARIO -o FILE`."""
    from orbitmesh.run.launch.compose import ComposeOptions, write_compose

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    opts = ComposeOptions(Path(args.scenario), out, args.image, args.broker,
                          args.nodes_per_container, args.duration, args.speed, args.run_id,
                          not args.no_supervisor, args.broker_insecure, args.tls)
    _warn_missing_image(args.image)
    if args.swarm:
        from orbitmesh.run.launch.stack import write_stack

        path = write_stack(opts, Path(args.results), _say)
        print(f"wrote {path}; deploy it with: docker stack deploy --resolve-image never -c "
              f"{path} NAME  (see its header)")
        return 0
    path = write_compose(opts, _say)
    print(f"wrote {path}; run it with: docker-compose -f {path} up --exit-code-from controller"
          "  (see its header)")
    return 0


def _warn_missing_image(tag: str) -> None:
    """A compose file may be meant for other hosts: a missing image here is a warning only."""
    from orbitmesh.errors import InputError
    from orbitmesh.run.launch.image import docker_client, require_image

    try:
        client = docker_client()
    except RunError:
        return
    try:
        require_image(client, tag)
    except InputError as exc:
        _say(f"warning: {exc}")
    finally:
        client.close()


def supervise_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh supervise`: act on a run's delegated container faults until it ends."""
    from orbitmesh.run.launch.docker import DockerRun
    from orbitmesh.run.launch.docker_up import load_run, supervise_detached
    from orbitmesh.run.launch.image import docker_client

    client = docker_client()
    if args.run:
        run = load_run(Path(args.run))
    elif args.run_id and args.run_dir and args.broker:
        run = DockerRun(args.run_id, Path(args.run_dir), "", "compose", args.broker,
                        args.broker, args.placement, args.workers, time.time())
    else:
        raise RunError("give a run directory, or --run-id, --run-dir and --broker")
    connect = args.broker
    if args.operator_file:  # a compose file's secret: the run's operator, never in argv
        from broker.credentials import load_operator
        from broker.url import parse_broker_url

        connect = load_operator(Path(args.operator_file)).on(
            parse_broker_url(args.broker or run.host_broker_url)).to_text(show_password=True)
    return supervise_detached(client, run, connect, _say, not args.quiet)


def main(argv: list[str] | None = None) -> int:
    """``python -m orbitmesh.run.launch.docker_cli COMMAND ...``: these commands on their own."""
    from orbitmesh.errors import InputError, OrbitmeshError, ScenarioError

    parser = argparse.ArgumentParser(prog="python -m orbitmesh.run.launch.docker_cli")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers = add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except (ScenarioError, BrokerError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OrbitmeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
