"""Network namespaces of a run's IP endpoints: the plan, the privilege check, create and remove.

The launcher writes the plan (``<run>/endpoints.json``: node, namespace, TUN name, addresses,
hosting worker) *before* any worker starts, so every namespace a run can make is on record; the
worker that hosts a node makes its namespace and adds ``endpoints-w<K>.json`` (its pid, what it
made). Cleanup goes by that record, never by a name pattern.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from orbitmesh.core.endpoint_spec import Endpoints, address_plan, gateway, with_ip_nodes
from orbitmesh.core.scenario import Scenario
from orbitmesh.core.topology import Topology
from orbitmesh.errors import RunError, ScenarioError
from orbitmesh.run.files import atomic_write

PLAN_FILE = "endpoints.json"
PLAN_VERSION = 1
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
CAP_NET_ADMIN = 12
IP_TIMEOUT_S = 10.0


class EndpointSetupError(ScenarioError):
    """IP endpoints cannot be made (privileges, a name in use); nothing was started (exit 2)."""


def with_endpoints(topology: Topology, extra: list[str] | None, *,
                   check: bool = True) -> Scenario:
    """The scenario with ``extra`` IP endpoint nodes; refused when IP endpoints cannot be made.

    ``check=False``: the workers run elsewhere (containers) and whoever starts them checks.
    """
    scenario = topology.scenario
    for name in extra or ():
        topology.node(name)  # ScenarioError naming close matches
    if extra:
        spec = with_ip_nodes(scenario.endpoints, extra)
        scenario = scenario.model_copy(update={"endpoints": spec})
    if scenario.endpoints.ip and check:
        missing = missing_privileges()
        if missing:
            nodes = ", ".join(e.node for e in scenario.endpoints.ip)
            raise EndpointSetupError(f"IP endpoints ({nodes}) need: " + "; ".join(missing))
    return scenario


def write_plan(run_dir: Path, topology: Topology, run_id: str, owner: Any) -> None:
    """Record the run's endpoints before anything starts (nothing to write without endpoints)."""
    spec = topology.scenario.endpoints
    if not (spec.ip or spec.udp or spec.mqtt):
        return
    plan = make_plan(topology, spec, run_id, owner)
    taken = [e["namespace"] for e in plan["ip"] if "container" not in e and exists(e["namespace"])]
    if taken:
        raise EndpointSetupError(f"network namespace(s) {', '.join(taken)} already exist: another "
                                 f"run with run id {run_id!r} is running, or one was killed; "
                                 "`orbitmesh down ITS_RUN_DIR` removes them, or pick --run-id")
    atomic_write(run_dir / PLAN_FILE, json.dumps(plan, indent=1), durable=True)


def namespace_name(run_id: str, node: str) -> str:
    """Namespace of ``node`` in run ``run_id`` (carries both; safe as a file name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"om-{run_id}-{node}")[:200]


def tun_name(run_id: str, node_index: int) -> str:
    """A TUN name unique on this host while it lives in the worker's namespace (<= 15 chars)."""
    return f"om{hashlib.sha1(run_id.encode()).hexdigest()[:6]}n{node_index}"[:15]


def missing_privileges() -> list[str]:
    """What this process lacks to make IP endpoints, each with how to get it (empty: nothing)."""
    missing = []
    if os.geteuid() != 0 and not _has_cap_net_admin():
        missing.append("root or CAP_NET_ADMIN (run as root, or `sudo setcap cap_net_admin+ep` "
                       "on the Python interpreter); without them use UDP pipes (endpoints.udp)")
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun (load the tun module: `modprobe tun`; in a container, "
                       "pass --device /dev/net/tun)")
    if shutil.which("ip") is None:
        missing.append("the `ip` command (Debian package iproute2)")
    return missing


def _has_cap_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


def make_plan(topology: Topology, spec: Endpoints, run_id: str, owner: Any) -> dict[str, Any]:
    """The run's endpoint record: addresses, namespaces and TUN names, and who hosts each."""
    index = topology.index
    addresses = address_plan(spec, index)
    ip = []
    base = Path(topology.scenario.source).resolve().parent if topology.scenario.source else None
    for e in spec.ip:
        v4, v6 = addresses[e.node]
        entry = {"node": e.node, "index": index[e.node], "namespace":
                 namespace_name(run_id, e.node), "tun": tun_name(run_id, index[e.node]),
                 "ipv4": v4, "ipv6": v6, "worker": int(owner[index[e.node]])}
        if e.container is not None:
            c = e.container
            entry["container"] = {
                "name": namespace_name(run_id, e.node), "image": c.image,
                "command": list(c.command) if c.command is not None else None,
                "environment": list(c.environment), "on_exit": c.on_exit,
                "volumes": [_resolve_bind(v, base) for v in c.volumes], "pid": None}
        ip.append(entry)
    gw4, gw6 = gateway(spec)
    return {"version": PLAN_VERSION, "run_id": run_id, "ipv4_prefix": spec.ipv4_prefix,
            "ipv6_prefix": spec.ipv6_prefix, "gateway": [gw4, gw6], "ip": ip,
            "udp": [p.model_dump() for p in spec.udp], "mqtt": list(spec.mqtt)}


def _resolve_bind(volume: str, base: Path | None) -> str:
    """A bind mount with its host path made absolute (relative to the scenario file)."""
    host, _, rest = volume.partition(":")
    if not host.startswith("/"):
        host = str(((base or Path.cwd()) / host).resolve())
    return f"{host}:{rest}"


def read_plan(run_dir: Path) -> dict[str, Any] | None:
    """The endpoint record of a run directory, or None when the run had no endpoints."""
    path = run_dir / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: not an endpoint record ({exc})") from exc
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION:
        raise RunError(f"{path}: endpoint record version {plan.get('version')!r}, this "
                       f"orbitmesh reads {PLAN_VERSION}")
    return plan


def hosts_text(plan: dict[str, Any]) -> str:
    """/etc/hosts for every endpoint namespace: every endpoint by node name."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    for e in plan["ip"]:
        lines += [f"{e['ipv4']} {e['node']}", f"{e['ipv6']} {e['node']}"]
    return "\n".join(lines) + "\n"


def _ip(*args: str) -> None:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True,
                              timeout=IP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunError(f"ip {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise RunError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def exists(namespace: str) -> bool:
    """True when the named namespace exists."""
    return (NETNS_DIR / namespace).exists()


def create(entry: dict[str, Any], plan: dict[str, Any], mtu_bytes: int, *,
           replace: bool = False) -> None:
    """Make ``entry``'s namespace around its already-open TUN: addresses, routes, hosts file.

    ``replace``: a restarted worker takes over the namespace its killed predecessor left.
    """
    ns, dev = entry["namespace"], entry["tun"]
    if exists(ns):
        if not replace:
            raise RunError(f"network namespace {ns} already exists; `orbitmesh down RUN_DIR` "
                           "removes a killed run's namespaces")
        remove(ns)
    _ip("netns", "add", ns)
    _ip("link", "set", dev, "netns", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    len4 = plan["ipv4_prefix"].split("/")[1]
    len6 = plan["ipv6_prefix"].split("/")[1]
    # The prefix's connected routes go through the TUN: nothing outside the prefix is routed.
    _ip("-n", ns, "addr", "add", f"{entry['ipv4']}/{len4}", "dev", dev)
    _ip("-n", ns, "-6", "addr", "add", f"{entry['ipv6']}/{len6}", "dev", dev, "nodad")
    _ip("-n", ns, "link", "set", dev, "mtu", str(mtu_bytes), "up")
    etc = ETC_NETNS / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(hosts_text(plan))


def attach_container(entry: dict[str, Any], plan: dict[str, Any], mtu_bytes: int) -> None:
    """Move ``entry``'s open TUN into its container's network namespace and configure it there.

    Docker cannot join a named namespace, so the TUN goes to the container's own (by its PID,
    checked to still be that container's process and not in this process's namespace: a reused
    PID must never receive the device).
    """
    container = entry["container"]
    pid, cid, dev = container.get("pid"), container.get("id"), entry["tun"]
    if not pid or not cid:
        raise RunError(f"container {container['name']} of {entry['node']} is not running "
                       "(it failed to start)")
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        theirs = os.readlink(f"/proc/{pid}/ns/net")
    except OSError as exc:
        raise RunError(f"container {container['name']} (pid {pid}) is gone: {exc.strerror}"
                       ) from exc
    if cid not in cgroup or theirs == os.readlink("/proc/self/ns/net"):
        raise RunError(f"pid {pid} is no longer container {container['name']}: it exited")
    _ip("link", "set", dev, "netns", str(pid))
    len4 = plan["ipv4_prefix"].split("/")[1]
    len6 = plan["ipv6_prefix"].split("/")[1]
    enter = ("nsenter", "-t", str(pid), "-n", "ip")
    for args in (("link", "set", "lo", "up"),
                 ("addr", "add", f"{entry['ipv4']}/{len4}", "dev", dev),
                 ("-6", "addr", "add", f"{entry['ipv6']}/{len6}", "dev", dev, "nodad"),
                 ("link", "set", dev, "mtu", str(mtu_bytes), "up")):
        _run([*enter, *args])


def _run(command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunError(f"{' '.join(command)}: {exc}") from exc
    if done.returncode != 0:
        raise RunError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")


def remove(namespace: str) -> bool:
    """Delete a namespace and its /etc/netns folder; True if there was something to remove."""
    found = False
    if exists(namespace):
        _ip("netns", "del", namespace)
        found = True
    etc = ETC_NETNS / namespace
    if etc.is_dir():
        shutil.rmtree(etc, ignore_errors=True)
        found = True
    return found


def cleanup_recorded(run_dir: Path) -> list[str]:
    """Remove every namespace on the run's record that still exists; the names removed."""
    plan = read_plan(run_dir)
    if plan is None:
        return []
    removed = []
    for entry in plan["ip"]:
        if "container" not in entry and remove(entry["namespace"]):
            removed.append(entry["namespace"])
    return removed
