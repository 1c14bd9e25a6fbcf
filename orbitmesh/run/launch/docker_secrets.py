"""The broker secrets of a docker run: one directory per container, mounted over ``<run>/broker``.

Every container of a run bind-mounts the whole run directory and runs as the caller's uid, so a
0600 file there would be readable by every container. Instead the host keeps the run's secrets
in ``<run>/broker/`` and gives each container one subdirectory of it, mounted read-only *over*
``<run>/broker`` inside that container:

==========================  ====================================================================
host directory              what the container sees at ``<run>/broker/``
==========================  ====================================================================
``broker/broker/``          ``mosquitto.conf``, ``passwords`` (``$7$`` hashes), ``acl``
``broker/controller/``      ``controller.url`` (the broker URL with the controller's password)
``broker/worker-K/``        ``worker-K.url`` (worker K's password only)
``broker/supervisor/``      ``operator.json`` (the detached supervisor reads as the operator)
==========================  ====================================================================

``<run>/broker/credentials.json`` (every role) and ``<run>/broker/operator.json`` (what
``orbitmesh fault/faults/stop/status/watch`` use through ``run.json``) stay on the host: no
container sees them. Passwords never go on a command line or into the environment, which
``docker inspect`` and ``ps`` show to anyone who can ask.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.credentials import (
    Credential,
    RunCredentials,
    load_operator,
    render_acl,
    render_password_file,
    write_operator_file,
    write_private,
)
from broker.mosquitto_conf import render_mosquitto_config, security_lines
from broker.url import BrokerURL
from orbitmesh.run.launch.control import write_run_file
from orbitmesh.run.launch.lockdown import CREDENTIALS_FILE, OPERATOR_FILE

BROKER_DIR = "broker"


def secrets_root(run_dir: Path) -> Path:
    """``<run>/broker``: the host's secrets, and where each container sees its own."""
    return run_dir / BROKER_DIR


def role_dir(run_dir: Path, role: str) -> Path:
    """The host directory mounted over ``<run>/broker`` in the container of ``role``."""
    path = secrets_root(run_dir) / role
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def role_mount(run_dir: Path, role: str) -> dict[str, dict[str, str]]:
    """The docker SDK ``volumes`` entry that shows a container only its own secrets."""
    return {str(role_dir(run_dir, role)): {"bind": str(secrets_root(run_dir)), "mode": "ro"}}


def lock_down(run_dir: Path, run_id: str, workers: int, host_url: BrokerURL) -> RunCredentials:
    """Fresh per-run users: ``credentials.json`` and ``operator.json`` (0600) on the host."""
    credentials = RunCredentials.generate(run_id, workers)
    root = secrets_root(run_dir)
    write_private(root / CREDENTIALS_FILE, credentials.to_json())
    write_operator_file(root / OPERATOR_FILE, credentials.operator, host_url)
    # The detached supervisor's copy: it watches the run as the operator.
    write_operator_file(role_dir(run_dir, "supervisor") / OPERATOR_FILE, credentials.operator,
                        host_url)
    return credentials


def write_broker_config(run_dir: Path, port: int, bind: str | None,
                        credentials: RunCredentials | None) -> Path:
    """mosquitto.conf (and passwords + ACL) for the broker container; its path inside it."""
    host = role_dir(run_dir, "broker")
    inside = secrets_root(run_dir)
    security = None
    if credentials is not None:
        write_private(host / "passwords", render_password_file(credentials))
        write_private(host / "acl", render_acl(credentials))
        security = security_lines(password_file=inside / "passwords", acl_file=inside / "acl")
    conf = render_mosquitto_config(port, bind=bind, security=security)
    write_private(host / "mosquitto.conf", conf)
    return inside / "mosquitto.conf"


def write_role_url(run_dir: Path, role: str, url: BrokerURL) -> Path:
    """Write ``url`` (with its password) for ``role``; the file's path inside its container."""
    write_private(role_dir(run_dir, role) / f"{role}.url", url.to_text(show_password=True) + "\n")
    return secrets_root(run_dir) / f"{role}.url"


def as_operator(run_dir: Path, url: BrokerURL) -> BrokerURL:
    """``url`` with the run's operator credential when the run has one (else unchanged)."""
    path = secrets_root(run_dir) / OPERATOR_FILE
    if url.username is not None or not path.is_file():
        return url
    return load_operator(path).on(url)


def container_secrets(run_dir: Path, role: str) -> dict[str, Any]:
    """The ``volumes`` of a container of ``role``: the run directory and its own secrets."""
    return {str(run_dir): {"bind": str(run_dir), "mode": "rw"}, **role_mount(run_dir, role)}


def secure_run(run_dir: Path, run_id: str, workers: int, host: BrokerURL,
               external: BrokerURL | None, insecure: bool, scenario: Path,
               say: Callable[[str], None]) -> RunCredentials | None:
    """The run's users (None: an open broker container, or an external broker), ``run.json``
    naming the operator's file, and a line on stderr saying how locked the broker is."""
    credentials = None
    operator: str | None = f"{BROKER_DIR}/{OPERATOR_FILE}"
    if external is not None:
        if external.username is not None:  # the host's tools use the URL's user, from a file
            user = Credential(external.username, external.password or "")
            write_operator_file(secrets_root(run_dir) / OPERATOR_FILE, user, host)
            write_operator_file(role_dir(run_dir, "supervisor") / OPERATOR_FILE, user, host)
        else:
            operator = None
        say(f"broker: external {host.address}: as configured there (its URL reaches each "
            "container in a 0600 file, never in argv)")
    elif insecure:
        operator = None
        say(f"broker: container on {host.address}: OPEN (--broker-insecure): anonymous "
            "clients, no ACL; any local process can inject frames, forge the clock or stop "
            "the run")
    else:
        credentials = lock_down(run_dir, run_id, workers, host)
        say(f"broker: container on {host.address}: per-run users and ACL, anonymous refused")
        say(f"operator credentials: {secrets_root(run_dir) / OPERATOR_FILE} (user "
            f"{credentials.operator.username}; `orbitmesh fault {run_dir} ...` reads it)")
    write_run_file(run_dir, run_id, host, str(scenario), operator)
    return credentials
