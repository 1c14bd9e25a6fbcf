"""`orbitmesh exec RUN NODE -- CMD ...` and `orbitmesh endpoints RUN`.

Both read the run directory's endpoint record (``endpoints.json``, written by the launcher before
the workers start, and ``endpoints-w<K>.json``, written by each worker once its namespaces exist).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from orbitmesh.errors import RunError, ScenarioError

EXIT_BAD_INPUT = 2


def add_parsers(sub: Any) -> None:
    """Register `exec` and `endpoints` on the CLI's subparsers."""
    ex = sub.add_parser("exec", help="run a command inside a node's network namespace",
                        description="Runs CMD with `ip netns exec` in NODE's namespace of a "
                        "running run (IP endpoints); exits with CMD's exit code.")
    ex.add_argument("run", help="run directory (holds endpoints.json)")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")
    ex.set_defaults(handler=exec_cmd)
    en = sub.add_parser("endpoints", help="a run's endpoints: nodes, addresses, namespaces")
    en.add_argument("run", help="run directory (holds endpoints.json)")
    en.add_argument("--format", choices=("table", "json"), default="table",
                    help="table (default) or json")
    en.set_defaults(handler=endpoints_cmd)


def _plan(run: str) -> dict[str, Any]:
    # netns (and the scenario models it needs) is imported by the commands that use it: every
    # `orbitmesh` command registers these parsers, and contacts or run should not pay for it.
    from orbitmesh.run.launch import netns

    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ScenarioError(f"{run}: not a run directory")
    plan = netns.read_plan(run_dir)
    if plan is None:
        raise ScenarioError(f"{run}: this run has no endpoints (no {netns.PLAN_FILE}); give "
                            "the scenario an endpoints: section or run with --endpoints NODE,...")
    return plan


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per endpoint: node, kind, addresses or pipe, namespace, worker pid, state."""
    from orbitmesh.run.launch import netns

    plan = _plan(str(run_dir))
    pids: dict[str, int] = {}
    for record in sorted(run_dir.glob("endpoints-w*.json")):
        try:
            body = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        for ns in body.get("namespaces", []):
            pids[ns] = int(body.get("pid", 0))
    out = []
    for e in plan["ip"]:
        if "container" in e:  # a user's container holds the TUN, not a namespace of ours
            from orbitmesh.run.launch.endpoint_containers import container_state

            name = e["container"]["name"]
            out.append({"node": e["node"], "kind": "ip", "ipv4": e["ipv4"], "ipv6": e["ipv6"],
                        "namespace": f"container {name}", "tun": e["tun"], "worker": e["worker"],
                        "pid": e["container"].get("pid"), "state": container_state(name)})
            continue
        out.append({"node": e["node"], "kind": "ip", "ipv4": e["ipv4"], "ipv6": e["ipv6"],
                    "namespace": e["namespace"], "tun": e["tun"], "worker": e["worker"],
                    "pid": pids.get(e["namespace"]),
                    "state": "up" if netns.exists(e["namespace"]) else "absent"})
    for p in plan["udp"]:
        out.append({"node": p["node"], "kind": "udp", "listen": p["listen"], "to": p["to"],
                    "deliver": p["deliver"]})
    for n in plan["mqtt"]:
        out.append({"node": n, "kind": "mqtt", "topic": f"orbitmesh/{plan['run_id']}/node/{n}/out"})
    return out


def endpoints_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh endpoints RUN`."""
    table = rows(Path(args.run))
    if args.format == "json":
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'node':<16}{'kind':<6}{'address / pipe':<44}{'namespace / topic':<40}state")
    for r in table:
        if r["kind"] == "ip":
            where, label = f"{r['ipv4']} {r['ipv6']}", r["namespace"]
            state = r["state"] + (f" (pid {r['pid']})" if r["pid"] else "")
        elif r["kind"] == "udp":
            where, label, state = f"{r['listen']} -> {r['to']} -> {r['deliver']}", "-", ""
        else:
            where, label, state = "-", r["topic"], ""
        print(f"{r['node']:<16}{r['kind']:<6}{where:<44}{label:<40}{state}")
    return 0


def exec_cmd(args: argparse.Namespace) -> int:
    """`orbitmesh exec RUN NODE -- CMD ...`: CMD's exit code."""
    from orbitmesh.run.launch import netns

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("error: give the command after --, e.g. orbitmesh exec RUN tokyo -- ping brussels",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    plan = _plan(args.run)
    entry = next((e for e in plan["ip"] if e["node"] == args.node), None)
    if entry is None:
        known = ", ".join(e["node"] for e in plan["ip"]) or "none"
        raise ScenarioError(f"{args.node} is not an IP endpoint of this run (IP endpoints: "
                            f"{known})")
    if "container" in entry:  # a user's container: its own file system, its own tools
        name = entry["container"]["name"]
        try:
            return subprocess.call(["docker", "exec", name, *cmd])
        except OSError as exc:
            raise RunError(f"docker exec {name}: {exc}") from exc
    if not netns.exists(entry["namespace"]):
        raise RunError(f"namespace {entry['namespace']} of {args.node} does not exist: the run "
                       "has not started its workers yet, or has ended")
    try:
        return subprocess.call(["ip", "netns", "exec", entry["namespace"], *cmd])
    except OSError as exc:
        raise RunError(f"ip netns exec {entry['namespace']}: {exc}") from exc
