"""`orbitmesh compose`: a compose file that runs a scenario without orbitmesh on the host.

The file (compose format 3.8) has services ``broker`` (unless an external ``--broker`` is
given), ``controller``, ``worker-<k>`` (one per plane, or per N nodes) and ``supervisor`` (carries
out container faults through the docker socket; single host only), all from the image built by
``orbitmesh image build``. The scenario (with the TLE/OMM files it names) and the broker config
travel inside the file as environment variables, which every container's prelude (``python -m
orbitmesh.run.launch.compose``) writes to ``/tmp/orbitmesh-input`` before it waits for the broker
and execs the real command. The broker is locked down (per-run users, ACL, anonymous refused):
its password file and ACL and each service's own broker URL are compose ``secrets:``, files
beside the compose file (:mod:`orbitmesh.run.launch.compose_secrets`); ``--tls`` adds a
certificate for it and TLS-only URLs; ``--broker-insecure`` gives the open broker of old.
Results go to the named volume ``run`` under ``/run/orbitmesh/<run id>``. It runs with ``docker
compose up`` (or ``docker-compose``) and deploys to Swarm with ``docker stack deploy`` (each
service has a ``deploy`` section; Swarm needs the image on every node and puts the services on an
overlay network).

The run id defaults to the one written into the file; set ``ORBITMESH_RUN_ID`` to give each run
its own results directory and topics.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from broker import tls_context
from broker.certs import ServerTLS
from broker.embedded import probe_connack
from broker.mosquitto_conf import render_mosquitto_config, security_lines
from broker.url import BrokerURL, parse_broker_url
from orbitmesh.core.limits import run_clock
from orbitmesh.core.placement import worker_count
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.errors import BrokerError, RunError
from orbitmesh.run.launch.compose_secrets import (
    ACL,
    BROKER_HOST,
    CA,
    OPERATOR,
    PASSWORDS,
    SERVER_CERT,
    SERVER_KEY,
    ComposeSecrets,
    external_secrets,
    inside,
    locked_secrets,
    secrets_dir,
    url_secret,
)
from orbitmesh.run.launch.control import write_run_file
from orbitmesh.run.launch.docker import (
    LABEL_ROLE,
    LABEL_RUN,
    LABEL_WORKER,
    SUPERVISE,
    placement_mode,
    safe_run_id,
    stage_scenario,
)

COMPOSE_VERSION = "3.8"
RUN_ROOT = "/run/orbitmesh"
INPUT_DIR = "/tmp/orbitmesh-input"
BROKER_PORT = 1883
TLS_PORT = 8883
DOCKER_SOCKET = "/var/run/docker.sock"
PRELUDE = ("python", "-m", "orbitmesh.run.launch.compose")
MAX_FILE_BYTES = 100_000
"""An input file travels in an environment variable; the kernel caps one at 128 KiB."""
BROKER_WAIT_S = 120.0
STOP_GRACE = "60s"
"""SIGTERM to the controller is a graceful stop: time for the drain, final count and summary."""


@dataclass(frozen=True)
class ComposeOptions:
    """What `orbitmesh compose` was asked to write."""

    scenario: Path
    out: Path
    image: str = "orbitmesh:latest"
    broker: str | None = None
    nodes_per_container: int | None = None
    duration_s: float | None = None
    speed: float | None = None
    run_id: str | None = None
    supervisor: bool = True
    broker_insecure: bool = False
    """The broker service without users or ACL (today's open broker, said in the header)."""
    tls: bool = False
    """The broker service speaks TLS only, with a certificate of its own CA (secrets)."""


@dataclass(frozen=True)
class ComposeFile:
    """A compose document and the secret files it names (None: it names none)."""

    document: dict[str, Any]
    secrets: ComposeSecrets | None


def _service(image: str, role: str, run_id_var: str, command: list[str],
             restart: str, swarm_restart: str, **extra: Any) -> dict[str, Any]:
    labels = {LABEL_RUN: run_id_var, LABEL_ROLE: role.split("-", maxsplit=1)[0]}
    if role.startswith("worker-"):
        labels[LABEL_WORKER] = role.split("-", 1)[1]
    service: dict[str, Any] = {
        "image": image, "command": command, "labels": dict(labels), "restart": restart,
        "deploy": {"restart_policy": {"condition": swarm_restart}}}
    service.update(extra)
    return service


def input_environment(files: dict[str, str]) -> dict[str, str]:
    """Environment variables carrying input files (``$`` doubled for compose)."""
    env: dict[str, str] = {}
    for i, (name, text) in enumerate(files.items()):
        if len(text.encode()) > MAX_FILE_BYTES:
            raise RunError(f"{name}: {len(text.encode())} bytes is too large to travel inside "
                           f"a compose file (at most {MAX_FILE_BYTES}); trim it, or mount it "
                           f"into the services at {INPUT_DIR}/{name} yourself")
        env[f"ORBITMESH_FILE_{i}_NAME"] = name
        env[f"ORBITMESH_FILE_{i}"] = text.replace("$", "$$")
    return env


def broker_secrets(opts: ComposeOptions, broker: BrokerURL, workers: int
                   ) -> ComposeSecrets | None:
    """The secrets a file needs: fresh users for its own broker (unless ``--broker-insecure``),
    or an external URL's ``user:pass@``; None when no password is involved."""
    if opts.tls and (opts.broker is not None or opts.broker_insecure):
        raise BrokerError("--tls is for the compose file's own, locked broker service: an "
                          "external --broker brings its own TLS (mqtts://...), and "
                          "--broker-insecure admits anyone on the network with or without TLS")
    if opts.broker is not None:
        if opts.broker_insecure:
            raise BrokerError("--broker-insecure opens the compose file's own broker service; "
                              "an external --broker is as secure as it is configured")
        return external_secrets(broker, workers) if broker.username is not None else None
    return None if opts.broker_insecure else locked_secrets(broker, workers)


def _broker_service(image: str, run_id_var: str, locked: bool, tls: bool) -> dict[str, Any]:
    security = None
    if locked:
        server = ServerTLS(Path(inside(CA)), Path(inside(SERVER_CERT)), Path(inside(SERVER_KEY)))
        security = security_lines(password_file=Path(inside(PASSWORDS)),
                                  acl_file=Path(inside(ACL)), tls=server if tls else None)
        # The container runs as root (compose) or as the caller (Swarm); as root mosquitto
        # would drop to its own user before reading the secrets, which it could not read then.
        if "user root" not in security:
            security.append("user root")
    conf = render_mosquitto_config(TLS_PORT if tls else BROKER_PORT, bind=None,
                                   security=security)
    return _service(image, "broker", run_id_var,
                    [*PRELUDE, "/usr/sbin/mosquitto", "-c", f"{INPUT_DIR}/mosquitto.conf"],
                    "unless-stopped", "any",
                    environment=input_environment({"mosquitto.conf": conf}))


def compose_document(opts: ComposeOptions, files: dict[str, str],
                     run_root: str = RUN_ROOT) -> ComposeFile:
    """The compose file as a dict, and its secrets (``files``: staged input files by name,
    scenario.yaml first; results under ``run_root``, where the volume ``run`` is mounted)."""
    scenario = load_scenario(opts.scenario)
    run_clock(scenario, opts.duration_s, opts.speed)  # refuse --speed 0 here, not in a container
    topology = build_topology(scenario)
    mode = placement_mode(opts.nodes_per_container)
    workers = worker_count(topology, mode, 1)
    run_id_var = f"${{ORBITMESH_RUN_ID:-{safe_run_id(opts.run_id or scenario.name)}}}"
    run_dir = f"{run_root}/{run_id_var}"
    own = (f"mqtts://{BROKER_HOST}:{TLS_PORT}?ca={inside(CA)}" if opts.tls else
           f"mqtt://{BROKER_HOST}:{BROKER_PORT}")
    url = parse_broker_url(opts.broker or own)  # fail here, once
    secrets = broker_secrets(opts, url, workers)
    bare = dataclasses.replace(url, username=None, password=None).to_text()  # argv and env

    def broker_args(role: str) -> list[str]:
        if secrets is None:
            return ["--broker", bare]
        return ["--broker-file", inside(url_secret(role))]

    scenario_in = f"{INPUT_DIR}/scenario.yaml"
    extra = [*(["--duration", f"{opts.duration_s:g}"] if opts.duration_s else []),
             *(["--speed", f"{opts.speed:g}"] if opts.speed else [])]
    common = ["--run-id", run_id_var, "--placement", mode, *extra]
    environment = {"ORBITMESH_RUN_DIR": run_dir, "ORBITMESH_WAIT_BROKER": bare,
                   **input_environment(files)}
    services: dict[str, Any] = {}
    depends: dict[str, Any] = {}
    if opts.broker is None:
        services["broker"] = _broker_service(opts.image, run_id_var, secrets is not None,
                                             opts.tls)
        depends = {"depends_on": ["broker"]}
    mounts = {"volumes": [f"run:{run_root}"], "environment": environment}
    controller_env = dict(environment)
    if secrets is not None:  # the prelude names it in run.json, for `orbitmesh fault RUN_DIR`
        controller_env.update(ORBITMESH_RUN_ID=run_id_var,
                              ORBITMESH_OPERATOR_FILE=inside(OPERATOR))
    services["controller"] = _service(
        opts.image, "controller", run_id_var,
        [*PRELUDE, "orbitmesh", "run", scenario_in, "--external-workers", "--out", run_dir,
         "--quiet", *common, *broker_args("controller")], "no", "none",
        stop_grace_period=STOP_GRACE, **{**mounts, "environment": controller_env}, **depends)
    for k in range(workers):
        services[f"worker-{k}"] = _service(
            opts.image, f"worker-{k}", run_id_var,
            [*PRELUDE, "python", "-m", "nodes.worker", "--scenario", scenario_in, "--worker",
             str(k), "--workers", str(workers), "--out", run_dir, *common,
             *broker_args(f"worker-{k}")], "on-failure", "on-failure", **mounts, **depends)
    if opts.supervisor:
        operator = [] if secrets is None else ["--operator-file", inside(OPERATOR)]
        services["supervisor"] = _service(
            opts.image, "supervisor", run_id_var,
            [*SUPERVISE, "--run-id", run_id_var, "--run-dir", run_dir, "--broker", bare,
             *operator, "--workers", str(workers), "--placement", mode],
            "no", "none", volumes=[f"run:{run_root}", f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"],
            depends_on=["controller"])
        services["supervisor"]["deploy"]["placement"] = {"constraints": ["node.role == manager"]}
    labels = {"labels": {LABEL_RUN: run_id_var}}
    document: dict[str, Any] = {"version": COMPOSE_VERSION, "services": services,
                                "volumes": {"run": labels}, "networks": {"default": labels}}
    if secrets is not None:
        folder = secrets_dir(opts.out).name
        for name, service in services.items():
            service["secrets"] = list(secrets.services[name])
        document["secrets"] = {name: {"file": f"./{folder}/{name}"}
                               for name in secrets.files
                               if any(name in services[s].get("secrets", ()) for s in services)}
    return ComposeFile(document, secrets)


class _Dumper(yaml.SafeDumper):
    """No YAML anchors: every service spelled out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block_strings(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _block_strings)

HEADER = """\
# Generated by `orbitmesh compose` from {scenario}. One host (docker-compose or docker compose):
#   docker-compose -f {name} up --exit-code-from controller  # returns when the run ends
# or in the background:
#   docker-compose -f {name} up -d
#   docker wait $(docker-compose -f {name} ps -q controller)   # the run's exit code
#   orbitmesh stop <run id>; orbitmesh fetch <run id>          # end it early; copy results out
#   docker-compose -f {name} down -v                            # -v: the results volume too
# Swarm: `orbitmesh compose --swarm` writes a stack file.
# Results: the volume "run", under {run_root}/<run id>. Set ORBITMESH_RUN_ID for each new run.
"""


def broker_note(opts: ComposeOptions, secrets: ComposeSecrets | None, swarm: bool = False
                ) -> list[str]:
    """What the file's header (and `orbitmesh compose` on stderr) says about the broker."""
    folder = secrets_dir(opts.out)
    network = "the stack's network" if swarm else "the compose network"
    faults = ("faults: the `docker run` below" if swarm else
              "faults: `docker-compose exec supervisor orbitmesh fault <run dir> ...`")
    if opts.broker is not None:
        if secrets is None:
            return [f"broker: external {parse_broker_url(opts.broker).address}, as given (no "
                    "password in it, so none in any service)"]
        return [f"broker: external {parse_broker_url(opts.broker).address}: its user:pass@ "
                f"reaches each service as a secret file in {folder}/ (mode 0600), never in a "
                "command line or the environment"]
    if secrets is None:
        return ["broker: OPEN (--broker-insecure): anonymous clients, no ACL; anything on "
                f"{network} can inject frames, forge the clock or stop the run"]
    if not opts.supervisor:
        faults = "faults: a container on the run's network with this file mounted, see " \
                 "docs/containers.md"
    wire = (f"TLS only (port {TLS_PORT}, a certificate of this file's own CA, {CA})" if opts.tls
            else f"no TLS: passwords and frames cross {network} in clear text (--tls)")
    return ["broker: per-run users and ACL, anonymous refused; the passwords are secrets in "
            f"{folder}/ (mode 0600, keep them with this file), each service sees only its own; "
            + wire,
            f"operator credentials: {folder / OPERATOR} ({faults})"]


def header_lines(lines: list[str]) -> str:
    """``lines`` as comment lines of a file's header, wrapped."""
    return "".join(textwrap.fill(line, 98, initial_indent="# ", subsequent_indent="#   ",
                                 break_on_hyphens=False) + "\n" for line in lines)


def staged_document(opts: ComposeOptions, run_root: str = RUN_ROOT) -> ComposeFile:
    """The compose document of ``opts`` with the scenario and its files staged inside it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="orbitmesh-compose-") as tmp:
        staged = stage_scenario(opts.scenario.resolve(), Path(tmp))
        files = {"scenario.yaml": staged.read_text()}
        for path in sorted(Path(tmp).iterdir()):
            if path.name != "scenario.yaml":
                files[path.name] = path.read_text()
        return compose_document(dataclasses.replace(
            opts, scenario=staged, run_id=opts.run_id or load_scenario(opts.scenario).name),
            files, run_root)


def dump_document(document: dict[str, Any]) -> str:
    """YAML of a compose document: no anchors, multi-line strings as blocks."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def render_compose_file(opts: ComposeOptions) -> tuple[str, ComposeSecrets | None]:
    """The compose file's text and the secrets it names (not written yet)."""
    compose = staged_document(opts)
    text = HEADER.format(scenario=opts.scenario, name=opts.out.name, run_root=RUN_ROOT)
    note = header_lines(broker_note(opts, compose.secrets))
    return text + note + dump_document(compose.document), compose.secrets


def render_compose(opts: ComposeOptions) -> str:
    """The compose file's text (its secrets, when it has any, are generated and dropped)."""
    return render_compose_file(opts)[0]


def write_compose(opts: ComposeOptions, say: Callable[[str], None] | None = None) -> Path:
    """Write the compose file and its secret files beside it; the file's path. ``say`` gets
    the lines on how locked the broker is."""
    text, secrets = render_compose_file(opts)  # bad input fails before anything is written
    if secrets is not None:
        secrets.write(secrets_dir(opts.out))
    if say is not None:
        for line in broker_note(opts, secrets):
            say(line)
    opts.out.write_text(text)
    return opts.out


def prelude(argv: list[str], environ: dict[str, str] | None = None,
            input_dir: Path = Path(INPUT_DIR)) -> int:
    """Inside a container: write the input files, make the run directory, wait for the broker,
    then exec ``argv``."""
    env = dict(os.environ if environ is None else environ)
    input_dir.mkdir(parents=True, exist_ok=True)
    i = 0
    while f"ORBITMESH_FILE_{i}_NAME" in env:
        name = Path(env[f"ORBITMESH_FILE_{i}_NAME"]).name
        (input_dir / name).write_text(env.get(f"ORBITMESH_FILE_{i}", ""))
        i += 1
    if env.get("ORBITMESH_RUN_DIR"):
        Path(env["ORBITMESH_RUN_DIR"]).mkdir(parents=True, exist_ok=True)
        if env.get("ORBITMESH_OPERATOR_FILE"):
            # The controller keeps this entry of run.json (`orbitmesh run --broker-file`): a
            # container that has the operator's secret runs `orbitmesh fault RUN_DIR` with it.
            write_run_file(Path(env["ORBITMESH_RUN_DIR"]), env["ORBITMESH_RUN_ID"],
                           parse_broker_url(env["ORBITMESH_WAIT_BROKER"]),
                           f"{INPUT_DIR}/scenario.yaml", env["ORBITMESH_OPERATOR_FILE"])
    if env.get("ORBITMESH_WAIT_BROKER"):
        url = parse_broker_url(env["ORBITMESH_WAIT_BROKER"])
        deadline = time.monotonic() + BROKER_WAIT_S
        try:
            tls = tls_context(url) if url.tls else None
        except BrokerError as exc:  # e.g. an external broker's ca= names a file on the host
            print(exc, file=sys.stderr)
            return 2
        while not probe_connack(url.host, url.port, tls=tls):
            if time.monotonic() > deadline:
                print(f"broker {url.address} did not answer within {BROKER_WAIT_S:g} s",
                      file=sys.stderr)
                return 2
            time.sleep(0.5)
    if not argv:
        return 0
    os.execvp(argv[0], argv)
    return 0  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(prelude(sys.argv[1:]))
