"""The docker backend: one run as containers (broker, controller, one per worker) on this daemon.

``orbitmesh up`` creates the run directory on the host, stages the scenario in ``input/``, and
starts every container from the same image with the run directory bind-mounted at the same
absolute path (results land on the host) and running as the caller's uid:gid:

* ``orbitmesh-<run>-broker``: mosquitto with a generated config, per-run users and an ACL per
  role, anonymous clients refused (unless ``--broker`` is given; ``--broker-insecure`` opens it);
* ``orbitmesh-<run>-controller``: ``orbitmesh run ... --external-workers --broker-file F``;
* ``orbitmesh-<run>-worker-<k>``: ``python -m nodes.worker ... --worker k --broker-file F``.

Each container reads its own password from a 0600 file that only it sees (see
:mod:`orbitmesh.run.launch.docker_secrets`); none is on a command line or in the environment.

Every container, network and volume carries the label ``orbitmesh.run=<run id>`` and is found
and removed by that label only. Networking is the host's (broker on a free 127.0.0.1 port), or
a bridge network made for the run (the broker is reached by container name inside it and on a
127.0.0.1 port published to this machine). The supervisor (:mod:`orbitmesh.run.launch.supervise`)
carries out the container faults the controller delegates.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from broker.credentials import Credential, RunCredentials
from broker.embedded import free_loopback_port, probe_connack
from broker.url import BrokerURL, parse_broker_url
from orbitmesh.core.limits import run_clock
from orbitmesh.core.placement import place, worker_count
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.errors import RunError
from orbitmesh.run.launch.docker_endpoints import (
    HOSTING_WORKER,
    check_host,
    refuse_plain,
    start_endpoints,
)
from orbitmesh.run.launch.docker_secrets import (
    container_secrets,
    secure_run,
    write_broker_config,
    write_role_url,
)
from orbitmesh.run.launch.endpoint_containers import remove_labelled
from orbitmesh.run.launch.labels import LABEL_ROLE, LABEL_RUN, LABEL_RUN_DIR, LABEL_WORKER

RECORD = "docker.json"
"""The run's record in its run directory: how `status` and `down` find it."""
CONTAINER_PORT = 1883
BROKER_READY_S = 20.0
SCENARIO_FILE_KEYS = ("tle", "omm", "plane_mapping")
SUPERVISE = ("python", "-m", "orbitmesh.run.launch.docker_cli", "supervise")
"""The supervisor's command inside the image (independent of the CLI's command table)."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class UpOptions:
    """What `orbitmesh up --backend docker` was asked to do."""

    scenario: Path
    duration_s: float | None = None
    speed: float | None = None
    out: Path | None = None
    image: str | None = None
    network: str = "host"
    """``host`` (broker on 127.0.0.1) or ``bridge`` (a network made for the run)."""
    broker: str | None = None
    """An external broker URL; None starts a broker container."""
    nodes_per_container: int | None = None
    run_id: str | None = None
    detach: bool = False
    progress: bool = True
    keep: bool = False
    """Leave the stopped containers in place after a foreground run (for `docker logs`)."""
    broker_insecure: bool = False
    """The broker container without per-run users and ACL (anonymous clients admitted)."""


@dataclass(frozen=True)
class DockerRun:
    """A run started as containers: where it lives and how to reach it."""

    run_id: str
    run_dir: Path
    image: str
    network: str
    """``host``, or the name of the run's bridge network."""
    broker_url: str
    """The broker as the containers reach it (no password: each container reads its own from
    its secrets file, see :mod:`orbitmesh.run.launch.docker_secrets`)."""
    host_broker_url: str
    """The broker as this machine reaches it (no password: the host's tools add the
    operator's, from ``<run>/broker/operator.json``)."""
    placement: str
    workers: int
    started_wall: float

    @property
    def labels(self) -> dict[str, str]:
        """Labels every resource of the run carries."""
        return {LABEL_RUN: self.run_id, LABEL_RUN_DIR: str(self.run_dir)}

    def name(self, role: str) -> str:
        """Container name of a role: ``orbitmesh-<run>-<role>``."""
        return f"orbitmesh-{self.run_id}-{role}"

    def save(self) -> None:
        """Write ``docker.json`` (broker URLs without passwords)."""
        body = asdict(self)
        body["run_dir"] = str(self.run_dir)
        for key in ("broker_url", "host_broker_url"):
            body[key] = parse_broker_url(body[key]).to_text(show_password=False)
        (self.run_dir / RECORD).write_text(json.dumps(body, indent=2))

    @classmethod
    def load(cls, run_dir: Path, broker: str | None = None) -> DockerRun:
        """Read ``docker.json``; ``broker`` (with credentials) replaces the recorded URLs."""
        body = json.loads((run_dir / RECORD).read_text())
        body["run_dir"] = Path(body["run_dir"])
        if broker is not None:
            body["broker_url"] = body["host_broker_url"] = broker
        return cls(**body)


def safe_run_id(text: str) -> str:
    """A run id usable in topic, container and network names."""
    run_id = re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip("-.") or "run"
    return run_id if run_id[0].isalnum() else f"r{run_id}"


MAX_CONTAINERS_PER_CORE = 5
"""More worker containers than this per core and a run of any size falls behind its clock."""


def fit_placement(topology: Topology, nodes_per_container: int | None, cores: int
                  ) -> tuple[str, int, str | None]:
    """Placement mode, worker containers, and what was decided (or warned) about the machine.

    By default one container per orbital plane (plus one for the ground), unless that would put
    more than :data:`MAX_CONTAINERS_PER_CORE` containers on each core: then nodes are packed
    into two containers per core. A placement the user chose is kept, with a warning and a
    proposal when it oversubscribes the machine.
    """
    limit = MAX_CONTAINERS_PER_CORE * cores
    mode = placement_mode(nodes_per_container)
    workers = worker_count(topology, mode, 1)
    fitting = math.ceil(topology.n_nodes / (2 * cores))
    if workers <= limit:
        return mode, workers, None
    if nodes_per_container is None:
        mode = placement_mode(fitting)
        packed = worker_count(topology, mode, 1)
        return mode, packed, (f"one container per plane would start {workers} worker containers "
                              f"on {cores} cores; placing {fitting} nodes per container "
                              f"({packed} containers) instead — --nodes-per-container N to "
                              "choose")
    return mode, workers, (f"warning: {workers} worker containers on {cores} cores will fall "
                           f"behind real time; try --nodes-per-container {fitting}")


def placement_mode(nodes_per_container: int | None) -> str:
    """``planes`` by default; ``chunks:N`` for N nodes per container."""
    if nodes_per_container is None:
        return "planes"
    if nodes_per_container < 1:
        raise RunError(f"--nodes-per-container {nodes_per_container}: expected 1 or more")
    return f"chunks:{nodes_per_container}"


def stage_scenario(source: Path, input_dir: Path) -> Path:
    """Copy a scenario (and the TLE/OMM/mapping files it names) into ``input_dir``."""
    input_dir.mkdir(parents=True, exist_ok=True)
    target = input_dir / "scenario.yaml"
    raw = yaml.safe_load(source.read_text())
    referenced = False
    for item in (raw or {}).get("constellations") or []:
        for key in SCENARIO_FILE_KEYS:
            if isinstance(item, dict) and isinstance(item.get(key), str):
                path = (source.parent / item[key]).resolve()
                shutil.copy(path, input_dir / path.name)
                item[key] = path.name
                referenced = True
    if referenced:
        target.write_text(yaml.safe_dump(raw, sort_keys=False))
    else:
        shutil.copy(source, target)  # byte for byte, comments and all
    return target


def run_containers(client: Any, run_id: str) -> list[Any]:
    """Every container (running or not) labelled with this run id."""
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}))


def worker_container(client: Any, run_id: str, worker: int) -> Any | None:
    """The container of worker ``worker`` of a run, or None."""
    found = client.containers.list(all=True, filters={"label": [f"{LABEL_RUN}={run_id}",
                                                                f"{LABEL_WORKER}={worker}"]})
    return found[0] if found else None


def role_container(client: Any, run_id: str, role: str) -> Any | None:
    """The container of a role (``controller``, ``broker``) of a run, or None."""
    found = client.containers.list(all=True, filters={"label": [f"{LABEL_RUN}={run_id}",
                                                                f"{LABEL_ROLE}={role}"]})
    return found[0] if found else None


def start(client: Any, opts: UpOptions, image: str, say: Progress) -> DockerRun:
    """Create the run directory and start the broker, controller and worker containers."""
    from orbitmesh.run.launch.image import require_image

    scenario = load_scenario(opts.scenario)
    run_clock(scenario, opts.duration_s, opts.speed)  # refuse --speed 0 here, not in a container
    require_image(client, image)  # else the daemon would try to pull it from a public registry
    if scenario.endpoints.ip:  # refused here, before anything starts (exit 2)
        refuse_plain(scenario)
    topology = build_topology(scenario)
    mode, workers, note = fit_placement(topology, opts.nodes_per_container, os.cpu_count() or 1)
    if note:
        say(note)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = safe_run_id(opts.run_id or f"{scenario.name}-{stamp}")
    if run_containers(client, run_id):
        raise RunError(f"run id {run_id!r} already has containers; `orbitmesh down {run_id}` "
                       "first, or choose another --run-id")
    if scenario.endpoints.ip:
        check_host(client, image, {LABEL_RUN: run_id})
    run_dir = (opts.out or Path("runs") / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if any(run_dir.glob("stats-w*.json")) or (run_dir / RECORD).exists():
        raise RunError(f"{run_dir} holds an earlier run; give a fresh --out directory")
    input_scenario = stage_scenario(opts.scenario.resolve(), run_dir / "input")
    if opts.network not in ("host", "bridge"):
        raise RunError(f"--network {opts.network!r}: expected host or bridge")
    network = "host" if opts.network == "host" else f"orbitmesh-{run_id}"
    external = None
    if opts.broker is not None:
        external = url = parse_broker_url(opts.broker)
        if network != "host" and url.host in ("127.0.0.1", "localhost", "::1"):
            raise RunError(f"--broker {url}: containers on a bridge network cannot reach this "
                           "machine's loopback; use --network host or a routable broker address")
        if opts.broker_insecure:
            raise RunError("--broker-insecure applies to the broker container; an external "
                           "--broker is as open as its own configuration")
        broker_url = host_url = url.to_text(show_password=False)
    else:
        port = free_loopback_port()
        host_url = f"mqtt://127.0.0.1:{port}"
        broker_url = host_url if network == "host" else (
            f"mqtt://orbitmesh-{run_id}-broker:{CONTAINER_PORT}")
    run = DockerRun(run_id, run_dir, image, network, broker_url, host_url, mode, workers,
                    time.time())
    run.save()
    credentials = secure_run(run.run_dir, run.run_id, run.workers,
                             parse_broker_url(run.host_broker_url), external,
                             opts.broker_insecure, input_scenario, say)
    nodes = place(topology, workers, mode)
    # Users' containers first, on the record (their PIDs too): the workers attach their TUNs.
    hosting = start_endpoints(topology, run_dir, run_id, nodes)
    if hosting:
        say(f"endpoint containers started; worker(s) {', '.join(map(str, sorted(hosting)))} "
            "host their nodes (host PID namespace, NET_ADMIN, SYS_ADMIN, /dev/net/tun)")
    try:
        _start_services(client, run, opts, input_scenario, hosting, say, credentials,
                        external)
    except BaseException:
        remove_labelled(client, run_id)  # the endpoint containers; `down` removes the rest
        raise
    say(f"controller and {workers} worker containers started ({mode}; "
        f"{topology.n_nodes} nodes, {int(max((nodes == k).sum() for k in range(workers)))} "
        "at most per worker)")
    return run


def _start_services(client: Any, run: DockerRun, opts: UpOptions, input_scenario: Path,
                    hosting: set[int], say: Progress, credentials: RunCredentials | None,
                    external: BrokerURL | None) -> None:
    """Broker (unless external), controller and workers; ``hosting``: workers whose nodes have
    endpoint containers (they get what moving a TUN into another container needs)."""
    run_id, run_dir, network, workers = run.run_id, run.run_dir, run.network, run.workers
    if network != "host":
        client.networks.create(network, driver="bridge", labels=run.labels)
        say(f"network {network} (bridge)")
    if opts.broker is None:
        _start_broker(client, run, credentials, say)
    extra = [*(["--duration", f"{opts.duration_s:g}"] if opts.duration_s else []),
             *(["--speed", f"{opts.speed:g}"] if opts.speed else [])]
    base = external or parse_broker_url(run.broker_url)

    def secret(role: str, user: Credential | None) -> list[str]:
        url = base if user is None else user.on(base)
        return ["--broker-file", str(write_role_url(run_dir, role, url))]

    common = ["--run-id", run_id, "--placement", run.placement]
    _run_container(client, run, "controller", [
        "orbitmesh", "run", str(input_scenario), "--external-workers", "--out", str(run_dir),
        "--quiet", *common,
        *secret("controller", credentials.controller if credentials else None), *extra])
    for k in range(workers):
        _run_container(client, run, f"worker-{k}", [
            "python", "-m", "nodes.worker", "--scenario", str(input_scenario), "--worker",
            str(k), "--workers", str(workers), "--out", str(run_dir), *common,
            *secret(f"worker-{k}", credentials.worker(k) if credentials else None), *extra],
            {LABEL_WORKER: str(k)}, **(HOSTING_WORKER if k in hosting else {}))


def _start_broker(client: Any, run: DockerRun, credentials: RunCredentials | None,
                  say: Progress) -> None:
    host_url = parse_broker_url(run.host_broker_url)
    if run.network == "host":
        conf = write_broker_config(run.run_dir, host_url.port, "127.0.0.1", credentials)
        ports = None
    else:
        conf = write_broker_config(run.run_dir, CONTAINER_PORT, None, credentials)
        ports = {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", host_url.port)}
    container = _run_container(client, run, "broker", ["/usr/sbin/mosquitto", "-c", str(conf)],
                               ports=ports)
    deadline = time.monotonic() + BROKER_READY_S
    while not probe_connack(host_url.host, host_url.port, timeout_s=0.5):
        container.reload()
        if container.status == "exited" or time.monotonic() > deadline:
            logs = container.logs(tail=15).decode(errors="replace")
            raise RunError(f"the broker container did not come up on {host_url.address}:\n"
                           f"{logs}")
        time.sleep(0.1)
    say(f"broker {run.name('broker')} ready on {host_url.address}")


def _run_container(client: Any, run: DockerRun, role: str, command: list[str],
                   labels: dict[str, str] | None = None, ports: dict[str, Any] | None = None,
                   **extra: Any) -> Any:
    """Start one labelled container of the run (the run directory mounted at its own path)."""
    from docker.errors import APIError

    kwargs: dict[str, Any] = {
        "name": run.name(role), "detach": True,
        "labels": {**run.labels, LABEL_ROLE: role.split("-", maxsplit=1)[0], **(labels or {})},
        "volumes": container_secrets(run.run_dir, role),
        "user": f"{os.getuid()}:{os.getgid()}", "working_dir": str(run.run_dir),
        "environment": {"HOME": "/tmp"}}
    if run.network == "host":
        kwargs["network_mode"] = "host"
    else:
        kwargs["network"] = run.network
        kwargs["ports"] = ports
    kwargs.update(extra)
    try:
        return client.containers.run(run.image, command, **kwargs)
    except APIError as exc:
        raise RunError(f"cannot start container {run.name(role)}: {exc.explanation or exc}; "
                       f"`orbitmesh down {run.run_dir}` removes what did start") from exc


def start_supervisor(client: Any, run: DockerRun) -> Any:
    """A container that supervises a detached run (it talks to dockerd through its socket)."""
    socket = "/var/run/docker.sock"
    host = os.environ.get("DOCKER_HOST", f"unix://{socket}")
    if host != f"unix://{socket}":
        raise RunError(f"--detach supervises container faults from a container that mounts "
                       f"{socket}; DOCKER_HOST={host} is not that socket: run in the foreground")
    return _run_container(
        client, run, "supervisor", [*SUPERVISE, str(run.run_dir), "--broker",
                                    run.broker_url, "--quiet"],
        volumes={**container_secrets(run.run_dir, "supervisor"),
                 socket: {"bind": socket, "mode": "rw"}},
        group_add=[str(os.stat(socket).st_gid)])


def nodes_per_worker(run: DockerRun) -> dict[int, int]:
    """How many nodes each worker hosts (from the staged scenario and the placement)."""
    topology = build_topology(load_scenario(run.run_dir / "input" / "scenario.yaml"))
    owner = place(topology, run.workers, run.placement)
    return {k: int((owner == k).sum()) for k in range(run.workers)}
