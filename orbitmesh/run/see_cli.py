"""The "see it" commands of the `orbitmesh` CLI: `report` and `export-geometry`.

Kept beside their modules' functions (run_report, geometry_export) rather than in cli.py, which
registers them with :func:`add_parsers` as it does the container commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def add_parsers(sub: Any, time_type: Callable[[str], Any], salvage_help: str) -> None:
    """Add `report` and `export-geometry` to ``sub`` (argparse subparsers), with handlers."""
    rep = sub.add_parser("report", help="a self-contained HTML report of a run, with plots",
                         description="One HTML file with every figure embedded (no external "
                         "URL): latency per flow, delivery and drops, links, telemetry, "
                         "telecommands, emulation excess, a map snapshot.")
    rep.add_argument("run", help="run directory, or a run id under runs/")
    rep.add_argument("-o", "--out", metavar="FILE",
                     help="HTML file to write (default: RUN/report.html)")
    rep.add_argument("--png", metavar="DIR", help="also write each figure as DIR/<figure>.png")
    rep.add_argument("--salvage", action="store_true", help=salvage_help)
    rep.set_defaults(handler=report_cmd)

    eg = sub.add_parser("export-geometry", help="satellite tracks, stations and links over a "
                        "span as CZML (Cesium), GeoJSON (GIS) or CSV")
    eg.add_argument("scenario", help="scenario YAML file")
    eg.add_argument("--format", choices=("czml", "geojson", "csv"), required=True,
                    help="czml: Cesium document; geojson: FeatureCollection; csv: positions")
    eg.add_argument("--start", type=time_type,
                    help="first sample (default: the scenario epoch)")
    eg.add_argument("--end", type=time_type,
                    help="last sample (default: start + scenario duration)")
    eg.add_argument("--step", type=float, default=60.0,
                    help="seconds between samples (default 60)")
    eg.add_argument("-o", "--out", metavar="FILE", help="output file (default: standard output)")
    eg.set_defaults(handler=export_geometry_cmd)


def report_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh report RUN`."""
    from orbitmesh.run.run_report import report_cli

    return report_cli(args.run, args.out, args.png, args.salvage)


def export_geometry_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh export-geometry SCENARIO`."""
    from contextlib import ExitStack

    from orbitmesh.core.scenario import load_scenario
    from orbitmesh.core.topology import build_topology
    from orbitmesh.run.geometry_export import sample_geometry, write_geometry
    from orbitmesh.run.progress import progress

    topology = build_topology(load_scenario(args.scenario))
    with progress("sampling links") as report:
        geo = sample_geometry(topology, args.start, args.end, args.step,
                              on_sample=lambda done, _total: report(done))
    with ExitStack() as stack:
        out = (stack.enter_context(open(args.out, "w", encoding="utf-8", newline=""))
               if args.out else sys.stdout)
        write_geometry(geo, args.format, out)
    return 0
