"""The `orbitmesh` command: a thin layer over the same API the tests call.

Exit codes: 0 success, 1 the work failed (run error, broken invariant), 2 bad input (usage,
scenario, unreachable broker), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from orbitmesh import __version__
from orbitmesh.errors import BrokerError, InputError, OrbitmeshError, RunError, ScenarioError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
SALVAGE_HELP = "read past damaged (corrupt or truncated) records and say what was skipped"


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 UTC time like 2026-01-01T00:10:00Z, got {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_z(when: datetime) -> str:
    """ISO-8601 UTC with a ``Z`` and milliseconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orbitmesh", description="orbitmesh: a distributed "
                                "ground-segment network emulator (SGP4 geometry, nodes over MQTT).")
    p.add_argument("--version", action="version", version=f"orbitmesh {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check a scenario and print what it describes")
    v.add_argument("scenario", help="scenario YAML file")
    v.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default): a description for people; json: counts, names and "
                   "warnings for tools (also on failure, with exit 2)")

    pa = sub.add_parser("path", help="the route chosen between two nodes (traceroute-like)")
    pa.add_argument("scenario")
    pa.add_argument("src")
    pa.add_argument("dst")
    pa.add_argument("--at", type=_time, help="one time (default: the scenario epoch)")
    pa.add_argument("--start", type=_time, help="first sample time (default: the epoch)")
    pa.add_argument("--end", type=_time, help="last sample time (default: start + duration)")
    pa.add_argument("--step", type=float, default=60.0, help="seconds between samples")
    pa.add_argument("--policy", help="routing policy name from the scenario")
    pa.add_argument("--format", choices=("table", "json"), default="table",
                    help="table (default) or json (one object per sample)")

    c = sub.add_parser("contacts", help="passes (AOS/TCA/LOS) or DTN contact plans (ION, HDTN)",
                       description="table/json: passes of satellites over stations. ion/hdtn: a "
                       "contact plan of every link class (ISL, GSL, fibre) sampled from the "
                       "emulator's own link states, antenna limits included.")
    c.add_argument("scenario")
    c.add_argument("--start", type=_time, help="default: the scenario epoch")
    c.add_argument("--end", type=_time, help="default: start + scenario duration (or the run's)")
    c.add_argument("--station", action="append", help="passes: only this station (repeatable)")
    c.add_argument("--satellite", action="append",
                   help="passes: only this satellite id (repeatable)")
    c.add_argument("--format", choices=("table", "json", "ion", "hdtn"), default="table",
                   help="table/json: passes; ion/hdtn: a DTN contact plan")
    c.add_argument("--step", type=float,
                   help="plans: seconds between link samples (default: the scenario tick)")
    c.add_argument("--from-run", metavar="RUN",
                   help="plans: use this run's recorded link timeline (what really happened)")
    c.add_argument("--node-map", metavar="FILE",
                   help="plans: also write node_id,number,kind (CSV) here")
    c.add_argument("--sgp4-step", type=float, metavar="SECONDS",
                   help="passes: 60 runs SGP4 at every other 30 s grid step everywhere and "
                   "interpolates between (times may move by ~1 ms; default: exact SGP4 at "
                   "every step a pass can use, which is as fast)")
    c.add_argument("-o", "--out", metavar="FILE", help="write here instead of standard output")

    r = sub.add_parser("run", help="run a scenario live over MQTT")
    r.add_argument("scenario")
    r.add_argument("--duration", type=float, help="scenario seconds (default: the scenario's)")
    r.add_argument("--speed", type=float, help="scenario seconds per wall second")
    r.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    r.add_argument("--broker", action="append", metavar="URL",
                   help="'embedded' (default) or mqtt[s]://[user:pass@]host:port; repeat it "
                   "for the members of a clustered broker (worker k uses member k mod M)")
    r.add_argument("-o", "--out", help="run directory (default: runs/<name>-<UTC timestamp>)")
    r.add_argument("--run-id", help="run id used in MQTT topics (default: derived from --out)")
    r.add_argument("--quiet", action="store_true", help="no live progress line")
    r.add_argument("--placement", default="blocks",
                   help="which worker hosts which node: blocks (default), planes or chunks:N")
    r.add_argument("--external-workers", action="store_true",
                   help="start no workers; wait for workers started elsewhere (containers)")
    r.add_argument("--fidelity-budget", type=float, metavar="MS",
                   help="hop excess p99 allowed, scenario ms (default: the scenario's "
                   "fidelity.budget_ms, 10); past it the run fails with exit 1")
    r.add_argument("--broker-insecure", action="store_true",
                   help="embedded broker without per-run users and ACL (open to every local "
                   "process)")
    r.add_argument("--tls", action="store_true",
                   help="embedded broker: TLS only, with a CA made for the run")
    r.add_argument("--broker-credentials", metavar="FILE",
                   help="external broker: credentials.json from `orbitmesh broker-config`")
    r.add_argument("--broker-file", metavar="FILE",
                   help="external broker: a file (mode 0600) holding its URL with this "
                   "controller's credentials (containers get their secret this way)")
    _live_arguments(r, control="--web-control")
    r.add_argument("--route-to", choices=("used", "all"), default="used",
                   help="route trees toward the ground nodes the scenario's frames can be "
                   "addressed to (used, default) or toward every ground node (all: for frames "
                   "injected from outside toward any station)")
    r.add_argument("--endpoints", metavar="NODE,NODE",
                   help="give these nodes IP endpoints (namespaces with a TUN; needs root)")

    f = sub.add_parser("fault", help="inject a fault into a running emulation",
                       description="Targets are positional in the kind's order (link_down A B "
                       "CLASS, node_down NODE, station_outage STATION, region_outage LAT LON KM, "
                       "plane_outage CONSTELLATION PLANE, operator_withdrawal OPERATOR, "
                       "worker_kill WORKER) or key=value (e.g. restart=true extra_loss=0.2).")
    f.add_argument("run", help="run directory (holds run.json) or run id with --broker")
    f.add_argument("kind")
    f.add_argument("targets", nargs="*")
    f.add_argument("--for", dest="for_s", type=float, help="heal after S scenario seconds")
    f.add_argument("--id", help="fault id (default: live<N>)")
    f.add_argument("--broker", help="broker URL (default: the one in run.json)")

    from orbitmesh.run.trace_cli import add_parsers as add_trace_parsers

    add_trace_parsers(sub, SALVAGE_HELP)  # replay, trace, compare

    from orbitmesh.run.see_cli import add_parsers as add_see_parsers

    add_see_parsers(sub, _time, SALVAGE_HELP)  # report, export-geometry

    w = sub.add_parser("watch", help="the live map of a running run (or --replay a finished "
                       "one) in the browser")
    w.add_argument("run", help="run directory (holds run.json; a finished run with --replay)")
    w.add_argument("--replay", action="store_true",
                   help="play a finished run back from its trace, with a time slider")
    _live_arguments(w, control="--control")

    fl = sub.add_parser("faults", help="list a running emulation's faults, or clear one")
    fl.add_argument("run", help="run directory (holds run.json), a run id under runs/, or a "
                    "run id with --broker")
    fl.add_argument("--clear", metavar="ID", help="end this active fault now")
    fl.add_argument("--broker", help="broker URL (default: the one in run.json)")
    fl.add_argument("--format", choices=("table", "json"), default="table",
                    help="table (default) or json")

    from orbitmesh.run.launch.docker_cli import add_parsers

    add_parsers(sub)  # image, up, status, down, compose, supervise (the docker backend)
    from orbitmesh.run.launch.lifecycle import add_parsers as add_lifecycle_parsers

    add_lifecycle_parsers(sub)  # stop, fetch (every backend)
    from orbitmesh.run.broker_config import add_parser as add_broker_config

    add_broker_config(sub)
    from orbitmesh.run.cluster_cli import add_parser as add_cluster

    add_cluster(sub)  # broker cluster up|down
    from orbitmesh.run.endpoints_cli import add_parsers as add_endpoint_parsers

    add_endpoint_parsers(sub)  # exec, endpoints
    return p


def _listen(text: str) -> str:
    from orbitmesh.run.web.server import parse_listen

    try:
        parse_listen(text)
    except RunError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _live_arguments(p: argparse.ArgumentParser, control: str) -> None:
    p.add_argument("--web", nargs="?", const="", metavar="HOST:PORT", type=_listen,
                   help="serve the live map (default 127.0.0.1 and a free port, printed)")
    p.add_argument(control, dest="web_control", action="store_true",
                   help="let the page inject and clear faults (same JSON as the control topic)")
    p.add_argument("--metrics", nargs="?", const="", metavar="HOST:PORT", type=_listen,
                   help="serve Prometheus metrics at /metrics (default 127.0.0.1, a free port)")


def _watch(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from orbitmesh.run.web.live import LiveOptions, watch

    options = LiveOptions("" if args.web is None else args.web, args.web_control, args.metrics)
    need = "links.msgpack" if args.replay else "run.json"
    if not (Path(args.run) / need).is_file():
        print(f"error: {args.run}: no {need} there; expected the directory of a "
              f"{'finished' if args.replay else 'running'} run (orbitmesh run --out DIR)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.replay:
        from orbitmesh.run.web.replay import serve_replay

        asyncio.run(serve_replay(Path(args.run), options))
    else:
        asyncio.run(watch(Path(args.run), options))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `orbitmesh` script."""
    args = _parser().parse_args(argv)
    try:
        handlers = {"validate": _validate, "path": _path, "contacts": _contacts, "run": _run,
                    "fault": _fault, "faults": _faults, "watch": _watch}
        handler = getattr(args, "handler", None) or handlers[args.command]
        return handler(args)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (BrokerError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OrbitmeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK


def _load(path: str):  # type: ignore[no-untyped-def]
    from orbitmesh.core.scenario import load_scenario
    from orbitmesh.core.topology import build_topology

    return build_topology(load_scenario(path))


def _validate(args: argparse.Namespace) -> int:
    from orbitmesh.core.describe import describe

    if args.format == "json":
        from orbitmesh.api import validation_report

        report = validation_report(args.scenario)
        print(json.dumps(report, indent=2))
        return EXIT_OK if report["ok"] else EXIT_BAD_INPUT
    topology = _load(args.scenario)
    print(describe(topology))
    print("ok")
    return EXIT_OK


def _path(args: argparse.Namespace) -> int:
    from orbitmesh.api import load
    from orbitmesh.run.progress import progress

    if args.at and (args.start or args.end):
        raise ScenarioError("give either --at or --start/--end, not both")
    handle = load(args.scenario)
    with progress("routing samples", len(handle.times(args.at, args.start, args.end,
                                                      args.step))) as report:
        rows = handle.path(args.src, args.dst, args.at, start=args.start, end=args.end,
                           step_s=args.step, policy=args.policy,
                           on_sample=lambda done, _total: report(done))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        if not row["path"]:
            print(f"{row['time']}  {args.src} -> {args.dst}: no route")
            continue
        print(f"{row['time']}  {args.src} -> {args.dst}: {len(row['path']) - 1} hops, "
              f"one-way {row['one_way_ms']:.3f} ms, RTT {row['rtt_ms']:.3f} ms")
        cumulative = 0.0
        for i, node in enumerate(row["path"]):
            if i == 0:
                print(f"  {i:>3}  {node:<24}")
                continue
            cumulative += row["hop_delays_ms"][i - 1]
            print(f"  {i:>3}  {node:<24} {row['hop_delays_ms'][i - 1]:9.3f} ms "
                  f"{cumulative:9.3f} ms")
    return EXIT_OK


def _contacts(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from orbitmesh.run.contacts_cli import write_passes, write_plan
    from orbitmesh.run.files import partial_output

    topology = _load(args.scenario)
    with ExitStack() as stack:
        # -o appears whole at the end or not at all: a refused option or a failed search
        # leaves no empty or half file (and an earlier file of that name as it was).
        out = stack.enter_context(partial_output(args.out)) if args.out else sys.stdout
        if args.format in ("table", "json"):
            for name in ("step", "from_run", "node_map"):
                if getattr(args, name) is not None:
                    raise ScenarioError(f"--{name.replace('_', '-')} applies to contact plans "
                                        "(--format ion or hdtn), not to passes")
            write_passes(topology, args, out)
        else:
            if args.station or args.satellite:
                raise ScenarioError("--station/--satellite select passes; a contact plan holds "
                                    "every node so that routes through them exist")
            write_plan(topology, args, out)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from orbitmesh.run.launch.local import run_cli

    return run_cli(args)


def _fault(args: argparse.Namespace) -> int:
    import asyncio

    from orbitmesh.run.launch.control import fault_command, locate_members, send_command
    from orbitmesh.run.run_report import resolve_run

    run_id, url = locate_members(str(resolve_run(args.run)), args.broker)  # a cluster: all
    try:
        command = fault_command(args.kind, args.targets, args.for_s, args.id)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    error = asyncio.run(send_command(run_id, url, command))
    if error is not None:
        print(f"error: the run refused the fault: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"sent to {run_id}: {json.dumps(command)}")
    return EXIT_OK


def _faults(args: argparse.Namespace) -> int:
    import asyncio

    from orbitmesh.run.launch.control import list_faults, locate_members, send_command
    from orbitmesh.run.run_report import resolve_run

    run_id, url = locate_members(str(resolve_run(args.run)), args.broker)  # a cluster: all
    if args.clear:
        error = asyncio.run(send_command(run_id, url, {"cmd": "clear", "id": args.clear}))
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"cleared {args.clear}")
        return EXIT_OK
    listing = asyncio.run(list_faults(run_id, url))
    if args.format == "json":
        print(json.dumps(listing, indent=2))
        return EXIT_OK
    print(f"faults of {run_id} at t={listing.get('t_s')} s:")
    for fault in listing.get("faults", []):
        target = " ".join(f"{k}={v}" for k, v in fault["target"].items())
        state = "ACTIVE" if fault["active"] else "      "
        print(f"  {state} {fault['id']:<10} {fault['kind']:<20} {target:<40} "
              f"{fault['start_s']:g}-{fault['end_s'] if fault['end_s'] is not None else ''} s "
              f"({fault['origin']})")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
