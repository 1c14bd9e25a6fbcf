"""IP endpoints on the docker backend (`orbitmesh up`): what is refused, what the workers get.

There the workers are containers themselves. A user's container at an IP endpoint node
(``endpoints.ip[].container``) is started by `orbitmesh up` from the run's endpoint record
before any worker container (:meth:`EndpointContainers.start`), with no network of its own; the
worker hosting the node opens the node's TUN in its own network namespace and moves it into the
user's container by that container's PID (:func:`netns.attach_container`). For that, and only
on the workers that host such a node, the worker container gets:

* the host's PID namespace (``pid_mode: host``): the PID on the record is a host PID, and the
  worker checks ``/proc/<pid>`` before it hands the device over;
* ``CAP_NET_ADMIN`` (open the TUN, ``ip link set DEV netns PID``) and ``CAP_SYS_ADMIN``
  (``nsenter -n`` to address it inside), as root in the container (capabilities docker grants
  apply to root only, and the target is a root process);
* ``/dev/net/tun``; ``ip`` and ``nsenter`` come with the image (iproute2, util-linux).

A plain IP endpoint (a namespace of orbitmesh's, no container) is refused on this backend: its
namespace would be made inside a worker container's mount namespace, out of reach of
`orbitmesh exec` and of `orbitmesh down` on this host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orbitmesh.core.scenario import Scenario
from orbitmesh.core.topology import Topology
from orbitmesh.run.launch.endpoint_containers import EndpointContainers
from orbitmesh.run.launch.labels import LABEL_ROLE
from orbitmesh.run.launch.netns import EndpointSetupError, read_plan, write_plan

TUN_DEVICE = "/dev/net/tun"
TOOLS = ("ip", "nsenter")
"""What a hosting worker runs to move and address a TUN (checked in the image before a run)."""
HOSTING_WORKER: dict[str, Any] = {
    "pid_mode": "host", "cap_add": ["NET_ADMIN", "SYS_ADMIN"],
    "devices": [f"{TUN_DEVICE}:{TUN_DEVICE}:rwm"], "user": "0:0"}
"""What a worker container that hosts a container endpoint node gets, beyond the others."""


def refuse_plain(scenario: Scenario) -> None:
    """Refuse IP endpoints without a container: this backend cannot give them a namespace."""
    plain = [e.node for e in scenario.endpoints.ip if e.container is None]
    if plain:
        raise EndpointSetupError(
            f"{scenario.source or 'the scenario'}: endpoints.ip ({', '.join(plain)}): an IP "
            "endpoint without a container is not supported by `orbitmesh up` (its namespace "
            "would live inside a worker container, out of reach of `orbitmesh exec` and "
            "`orbitmesh down`); give each a container (endpoints.ip[].container, e.g. "
            "{image: \"orbitmesh:latest\", command: \"sleep infinity\"}), or run the scenario "
            "with `orbitmesh run` (workers on this host)")


def check_host(client: Any, image: str, labels: dict[str, str] | None = None) -> None:
    """Refuse (exit 2) when this host or the worker image cannot move a TUN into a container.

    ``labels``: the run's, on the probe container (removed once it answered).
    """
    if not os.path.exists(TUN_DEVICE):
        raise EndpointSetupError(f"container endpoints need {TUN_DEVICE} on this host (the "
                                 "worker containers get it): load the tun module (`modprobe "
                                 "tun`)")
    probe = " && ".join(f"command -v {tool} >/dev/null" for tool in TOOLS)
    from docker.errors import ContainerError

    try:
        client.containers.run(image, ["sh", "-c", probe], remove=True, network_mode="none",
                              labels={**(labels or {}), LABEL_ROLE: "probe"})
    except ContainerError:
        raise EndpointSetupError(
            f"image {image} lacks {' or '.join(TOOLS)}, which a worker container runs to move "
            "a node's TUN into its endpoint container: rebuild it (`orbitmesh image build "
            "--offline` installs iproute2) or pass --image") from None


def hosting_workers(plan: dict[str, Any] | None) -> set[int]:
    """The workers that host a container endpoint node on the run's record."""
    if plan is None:
        return set()
    return {int(e["worker"]) for e in plan["ip"] if "container" in e}


def start_endpoints(topology: Topology, run_dir: Path, run_id: str,
                    owner: Any) -> set[int]:
    """Write the endpoint record and start the users' containers on it; the hosting workers.

    Before any worker container: the workers read the containers' PIDs from the record.
    """
    write_plan(run_dir, topology, run_id, owner)
    EndpointContainers.start(run_dir)
    return hosting_workers(read_plan(run_dir))
