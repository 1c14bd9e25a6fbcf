"""The trace commands of the `orbitmesh` CLI: `replay`, `trace info|export` and `compare`.

Registered by cli.py with :func:`add_parsers`, as the other command groups are; exit codes as
cli.py's (0 success, 1 the work failed, 2 bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orbitmesh.errors import OrbitmeshError, RunError, ScenarioError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_parsers(sub: Any, salvage_help: str) -> None:
    """Add `replay`, `trace` and `compare` to ``sub`` (argparse subparsers), with handlers."""
    rp = sub.add_parser("replay", help="replay recorded or imported traffic into a scenario")
    rp.add_argument("trace", help="a run directory (trace), a CSV of time_s,source,destination,"
                    "bytes[,flow], or a pcap/pcapng capture with --mapping")
    rp.add_argument("--scenario", required=True, help="the scenario to replay into")
    rp.add_argument("--mapping", help="pcap import: file mapping IP addresses to node ids")
    rp.add_argument("--links-from", help="replay this trace's link timeline instead of geometry")
    rp.add_argument("--faults-from", help="repeat this trace's faults")
    rp.add_argument("--duration", type=float, help="scenario seconds (default: the scenario's)")
    rp.add_argument("--speed", type=float, help="scenario seconds per wall second")
    rp.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    rp.add_argument("--broker", default="embedded",
                    help="'embedded' (default) or mqtt[s]://[user:pass@]host:port")
    rp.add_argument("-o", "--out", help="run directory (default: runs/<name>-<UTC timestamp>)")
    rp.add_argument("--quiet", action="store_true", help="no live progress line")
    rp.add_argument("--salvage", action="store_true",
                    help="replay a damaged trace or link timeline: skip (events) or stop at "
                    "(links) the damage, and say how much was lost")
    rp.set_defaults(handler=replay_cmd)

    tr = sub.add_parser("trace", help="inspect or export a run's trace")
    tr.set_defaults(handler=trace_cmd)
    trs = tr.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    ti = trs.add_parser("info", help="summarise a trace: span, flows, frames, faults")
    ti.add_argument("run", help="run directory, or a run id under runs/")
    ti.add_argument("--format", choices=("table", "json"), default="table",
                    help="table (default) or json")
    ti.add_argument("--salvage", action="store_true", help=salvage_help)
    te = trs.add_parser("export", help="frame events as jsonl / csv, frame hops as pcap, or "
                        "the link timeline as csv (links-csv)")
    te.add_argument("run", help="run directory, or a run id under runs/")
    te.add_argument("--format", choices=("jsonl", "csv", "pcap", "links-csv"), required=True,
                    help="jsonl/csv: one row per frame event; pcap: one packet per hop; "
                    "links-csv: one row per link up/down/delay change")
    te.add_argument("-o", "--out", help="output file (default: standard output)")
    te.add_argument("--node-map", help="also write the node address map (CSV) here")
    te.add_argument("--salvage", action="store_true", help=salvage_help)

    cp = sub.add_parser("compare", help="compare two runs per flow; a regression gate for CI")
    cp.add_argument("run_a", help="run A (directory or its summary.json): the baseline")
    cp.add_argument("run_b", help="run B (directory or its summary.json): the candidate")
    cp.add_argument("--max-latency-increase", "--max-latency-increase-pct", type=float,
                    dest="max_latency_increase", metavar="PCT",
                    help="fail (exit 1) when B's p50 or p95 latency is more than PCT %% above A's")
    cp.add_argument("--max-delivery-drop", "--max-delivery-drop-pct", type=float,
                    dest="max_delivery_drop", metavar="PCT",
                    help="fail (exit 1) when B's delivery ratio is more than PCT points below A's")
    cp.add_argument("--format", choices=("table", "json"), default="table",
                    help="table (default) or json")
    cp.add_argument("--html", metavar="FILE",
                    help="also write both runs' report figures side by side to this HTML file")
    cp.set_defaults(handler=compare_cmd)


def replay_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh replay`: a recorded trace, a CSV or a capture offered again to a scenario."""
    from pathlib import Path

    from orbitmesh.run.launch.local import RunOptions, print_result, run
    from orbitmesh.run.launch.replay import recorded_faults
    from orbitmesh.run.trace import Damage, TraceError, offered_traffic, read_link_timeline

    trace = Path(args.trace)
    damage: list[Damage] = []
    try:  # a damaged trace is bad input (exit 2) unless --salvage
        offered = offered_traffic(trace, salvage=args.salvage, damage=damage) \
            if trace.is_dir() else []
        replay_faults = recorded_faults(Path(args.faults_from)) if args.faults_from else None
        if args.links_from:
            _, link_warnings = read_link_timeline(Path(args.links_from), salvage=args.salvage)
            for warning in link_warnings:
                print(f"warning: {warning}", file=sys.stderr)
    except TraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for d in damage:
        print(f"warning: salvaged: {d.describe()}", file=sys.stderr)
    if trace.is_dir():
        pass  # read above
    elif trace.suffix.lower() == ".csv":
        from orbitmesh.run.traffic_import import load_traffic_csv

        offered = load_traffic_csv(trace, _node_ids(args.scenario))
    elif trace.suffix.lower() in (".pcap", ".pcapng", ".cap"):
        if not args.mapping:
            raise ScenarioError(f"{trace}: a pcap import needs --mapping FILE (IP address -> "
                                "node id); see docs/traces.md")
        from orbitmesh.run.traffic_import import load_traffic_pcap

        offered, warnings = load_traffic_pcap(trace, Path(args.mapping),
                                              _node_ids(args.scenario))
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        raise ScenarioError(f"{trace}: expected a run directory, a .csv or a .pcap/.pcapng file")
    opts = RunOptions(Path(args.scenario), args.duration, args.speed, args.workers, args.broker,
                      Path(args.out) if args.out else None, None, not args.quiet,
                      replay=offered,
                      replay_faults=replay_faults,
                      links_from=Path(args.links_from) if args.links_from else None,
                      replay_origin=str(trace), salvage=args.salvage)
    return print_result(run(opts))


def trace_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh trace info|export`."""
    from orbitmesh.run import export, pcap_export
    from orbitmesh.run.files import DiskError, partial_output
    from orbitmesh.run.run_report import resolve_run
    from orbitmesh.run.trace import Damage
    from orbitmesh.run.trace_info import format_info, trace_info

    run = resolve_run(args.run)
    try:
        if args.trace_command == "info":
            info = trace_info(run, salvage=args.salvage)
            print(json.dumps(info, indent=2) if args.format == "json" else format_info(info))
            if info["damage"] and not args.salvage:
                print(f"error: {Damage(**info['damage'][0]).describe()}; the trace is damaged "
                      "(--salvage reads past the damage)", file=sys.stderr)
                return EXIT_BAD_INPUT
            return EXIT_OK
        if args.node_map:
            with partial_output(args.node_map, "w") as fh:
                pcap_export.export_node_map(run, fh)
        damage: list[Damage] = []
        if args.format == "links-csv":
            warnings: list[str] = []
            if args.out:
                with partial_output(args.out, "w") as fh:
                    export.export_links_csv(run, fh, salvage=args.salvage, warnings=warnings)
            else:
                export.export_links_csv(run, sys.stdout, salvage=args.salvage, warnings=warnings)
            for warning in warnings:
                print(f"warning: salvaged: {warning}", file=sys.stderr)
            return EXIT_OK
        if args.format == "pcap":
            if args.out is None and sys.stdout.isatty():
                raise ScenarioError("refusing to write a pcap to a terminal; use --out FILE or "
                                    "redirect standard output")
            if args.out:
                with partial_output(args.out, "wb") as fh:
                    count = pcap_export.export_pcap(run, fh, salvage=args.salvage, damage=damage)
            else:
                count = pcap_export.export_pcap(run, sys.stdout.buffer, salvage=args.salvage,
                                                damage=damage)
            print(f"{count} packets", file=sys.stderr)
        else:
            writer = export.export_jsonl if args.format == "jsonl" else export.export_csv
            if args.out:
                with partial_output(args.out, "w") as fh:
                    count = writer(run, fh, salvage=args.salvage, damage=damage)
            else:
                count = writer(run, sys.stdout, salvage=args.salvage, damage=damage)
        for d in damage:
            print(f"warning: salvaged: {d.describe()}", file=sys.stderr)
        if damage:
            print(f"warning: {count} row(s) written from a damaged trace; "
                  f"{sum(d.skipped_b or 0 for d in damage)} byte(s) skipped", file=sys.stderr)
        return EXIT_OK
    except DiskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RunError as exc:  # not a trace, or a damaged one: bad input
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def compare_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh compare`: two runs per flow, exit 1 past a threshold."""
    from pathlib import Path

    from orbitmesh.run.compare import run_compare

    code = run_compare(Path(args.run_a), Path(args.run_b),
                       max_latency_increase_pct=args.max_latency_increase,
                       max_delivery_drop_pct=args.max_delivery_drop,
                       as_json=args.format == "json")
    if args.html and code != EXIT_BAD_INPUT:
        from orbitmesh.run.run_report import compare_html_cli

        try:
            compare_html_cli(Path(args.run_a), Path(args.run_b), Path(args.html))
        except OrbitmeshError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"side by side: {args.html}", file=sys.stderr)
    return code


def _node_ids(scenario: str) -> tuple[str, ...]:
    from orbitmesh.core.scenario import load_scenario
    from orbitmesh.core.topology import build_topology

    return build_topology(load_scenario(scenario)).node_ids
