"""A run's labelled docker resources: find them, list them, save their logs, remove them.

Everything here goes by the label ``orbitmesh.run=<run id>`` (services of a Swarm stack too),
never by name pattern.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from orbitmesh.errors import InputError, RunError
from orbitmesh.run.launch.docker import (
    LABEL_ROLE,
    LABEL_RUN,
    LABEL_RUN_DIR,
    LABEL_WORKER,
    RECORD,
    run_containers,
)


def save_logs(client: Any, run_id: str, run_dir: Path) -> list[Path]:
    """Write each container's output to ``<run>/logs/<name>.log``; the files written."""
    from docker.errors import APIError

    if not run_dir.is_dir():
        return []
    out = run_dir / "logs"
    written = []
    for container in run_containers(client, run_id):
        try:
            text = container.logs(stdout=True, stderr=True)
        except APIError:
            continue
        out.mkdir(exist_ok=True)
        path = out / f"{container.name}.log"
        path.write_bytes(text)
        written.append(path)
    return written


def down(client: Any, run_id: str, *, volumes: bool = False) -> dict[str, list[str]]:
    """Remove every service, Swarm secret, container and network labelled with the run id, and
    its volumes when ``volumes`` (else they are listed under ``kept``); their names."""
    from docker.errors import APIError, NotFound

    label = {"label": f"{LABEL_RUN}={run_id}"}
    removed: dict[str, list[str]] = {"services": [], "containers": [], "networks": [],
                                     "secrets": [], "volumes": [], "kept": []}
    for service in _run_services(client, label):  # first: else Swarm replaces their containers
        with contextlib.suppress(NotFound):
            service.remove()
            removed["services"].append(service.name)
    # A stack's broker secrets (compose_secrets.py); free once their services are gone.
    for secret in _run_services(client, label, kind="secrets"):
        with contextlib.suppress(NotFound):
            secret.remove()
            removed["secrets"].append(secret.name)
    for container in run_containers(client, run_id):
        try:
            container.remove(force=True, v=True)
            removed["containers"].append(container.name)
        except NotFound:
            continue
        except APIError as exc:
            raise RunError(f"cannot remove container {container.name}: {exc}") from exc
    for network in client.networks.list(filters=label):
        try:
            network.remove()
            removed["networks"].append(network.name)
        except NotFound:
            continue
    for volume in client.volumes.list(filters=label):
        if not volumes:
            removed["kept"].append(volume.name)
            continue
        try:
            volume.remove(force=True)
            removed["volumes"].append(volume.name)
        except NotFound:
            continue
    return removed


def _run_services(client: Any, label: dict[str, str], kind: str = "services") -> list[Any]:
    """Swarm services (or ``kind="secrets"``) of a run (none when this daemon is not a swarm
    manager)."""
    from docker.errors import APIError

    try:
        return list(getattr(client, kind).list(filters=label))
    except APIError:  # "This node is not a swarm manager"
        return []


def resolve(client: Any, run: str) -> tuple[str, Path | None]:
    """Run id and run directory of RUN (a run directory holding docker.json, or a run id)."""
    path = Path(run)
    if (path / RECORD).is_file():
        body = json.loads((path / RECORD).read_text())
        return str(body["run_id"]), path.resolve()
    for container in run_containers(client, run):
        run_dir = container.labels.get(LABEL_RUN_DIR)
        return run, Path(run_dir) if run_dir else None
    label = {"label": f"{LABEL_RUN}={run}"}
    if any(client.networks.list(filters=label)) or any(client.volumes.list(filters=label)) or (
            _run_services(client, label)):
        return run, None
    raise InputError(f"{run}: neither a run directory (with {RECORD}, launcher.json or "
                     "run.json) nor the id of a run on this docker daemon; `docker ps -a "
                     f"--filter label={LABEL_RUN}` lists the container runs there are")


def container_rows(client: Any, run_id: str) -> list[dict[str, Any]]:
    """Name, role, worker index and state of each container of a run, sorted."""
    rows = []
    for container in run_containers(client, run_id):
        labels = container.labels
        worker = labels.get(LABEL_WORKER)
        state = container.attrs.get("State", {})
        rows.append({"name": container.name, "role": labels.get(LABEL_ROLE, "?"),
                     "worker": None if worker is None else int(worker),
                     "state": container.status, "exit_code": state.get("ExitCode"),
                     "started": state.get("StartedAt", "")[:19]})
    order = {"broker": 0, "controller": 1, "supervisor": 2, "worker": 3}
    rows.sort(key=lambda r: (order.get(r["role"], 9), r["worker"] or 0))
    return rows
