"""Talk to a running emulation: inject and clear faults, list them.

A run writes ``run.json`` into its run directory (run id, broker URL and where the operator
credential file is, never a password); these functions read it, connect to the run's broker as
the operator and use the control topic like any MQTT client
(``mosquitto_pub -u <user> -t orbitmesh/<run>/control -m '{...}'``) would.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.client import MqttTransport
from broker.credentials import load_operator
from broker.url import BrokerURL, parse_broker_url
from orbitmesh.core.scenario import FaultSpec
from orbitmesh.errors import RunError
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.files import atomic_write

RUN_FILE = "run.json"
REPLY_WAIT_S = 1.5

# Positional targets per kind, in order: `orbitmesh fault RUN link_down tokyo '*' ...`
POSITIONAL: dict[str, tuple[str, ...]] = {
    "link_down": ("a", "b", "link_class"), "link_degrade": ("a", "b", "link_class"),
    "node_down": ("node",), "node_restart": ("node",), "station_outage": ("station",),
    "region_outage": ("lat_deg", "lon_deg", "radius_km"),
    "plane_outage": ("constellation", "plane"), "operator_withdrawal": ("operator",),
    "worker_kill": ("worker",), "broker_outage": (), "container_kill": ("worker",),
    "container_pause": ("worker",), "container_unpause": ("worker",),
    "container_restart": ("worker",),
}


def write_run_file(run_dir: Path, run_id: str, url: BrokerURL, scenario: str,
                   operator_file: str | None = None, members: Sequence[BrokerURL] = ()) -> None:
    """Record how to reach a run: never a password, but where the operator credential is
    (and, on a clustered broker, every member, for the tools to fail over)."""
    body: dict[str, Any] = {"run_id": run_id, "broker": url.to_text(show_password=False),
                            "scenario": scenario}
    if members:
        body["broker_members"] = [m.to_text(show_password=False) for m in members]
    if operator_file is not None:
        body["operator_credentials"] = operator_file  # relative to the run directory
    atomic_write(run_dir / RUN_FILE, json.dumps(body, indent=2))


def locate(run: str, broker: str | None) -> tuple[str, BrokerURL]:
    """Run id and broker of RUN (a run directory, or a run id with ``--broker``).

    From a run directory the operator credential it names (``operator_credentials``) is used,
    unless ``broker`` is given.
    """
    path = Path(run)
    if (path / RUN_FILE).is_file():
        info = json.loads((path / RUN_FILE).read_text())
        if broker is not None:
            return str(info["run_id"]), parse_broker_url(broker)
        url = parse_broker_url(str(info["broker"]))
        if info.get("operator_credentials"):
            url = load_operator(path / str(info["operator_credentials"])).on(url)
        return str(info["run_id"]), url
    if broker is None:
        raise RunError(f"{run}: no {RUN_FILE} there; give a run directory, or a run id together "
                       "with --broker mqtt://host:port")
    return run, parse_broker_url(broker)


def fault_command(kind: str, targets: list[str], for_s: float | None,
                  fault_id: str | None) -> dict[str, Any]:
    """Build and validate a ``{"cmd": "fault", ...}`` command from CLI words."""
    if kind not in POSITIONAL:
        raise RunError(f"unknown fault kind {kind!r}; expected one of {sorted(POSITIONAL)}")
    body: dict[str, Any] = {"cmd": "fault", "kind": kind}
    positional = list(POSITIONAL[kind])
    for word in targets:
        if "=" in word:
            key, value = word.split("=", 1)
        elif positional:
            key, value = positional.pop(0), word
        else:
            raise RunError(f"{kind}: unexpected target {word!r}; use key=value")
        body[key] = _value(value)
    if for_s is not None:
        body["for_s"] = for_s
    if fault_id is not None:
        body["id"] = fault_id
    try:
        FaultSpec.model_validate({k: v for k, v in body.items() if k != "cmd"})
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or kind}: "
                            f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors())
        raise RunError(f"invalid fault: {reasons}") from exc
    return body


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def locate_members(run: str, broker: str | None) -> tuple[str, list[BrokerURL]]:
    """Like :func:`locate`, with every member of a clustered broker (run.json's
    ``broker_members``), the recorded one first; one URL otherwise."""
    run_id, url = locate(run, broker)
    path = Path(run) / RUN_FILE
    if broker is None and path.is_file():
        members = json.loads(path.read_text()).get("broker_members") or []
        if members:
            return run_id, [parse_broker_url(str(m)) for m in members]
    return run_id, [url]


async def send_command(run_id: str, url: BrokerURL | Sequence[BrokerURL],
                       command: dict[str, Any]) -> str | None:
    """Publish a control command; return the run's error reply, if one comes within a moment."""
    topics = Topics(run_id)
    async with MqttTransport(url, client_id=f"orbitmesh-cli-{os.getpid()}") as transport:
        await transport.subscribe(topics.control_error)
        transport.publish(topics.control, json.dumps(command).encode())
        await transport.flush()
        try:
            async with asyncio.timeout(REPLY_WAIT_S):
                async for batch in transport.batches():
                    for message in batch:
                        reply = json.loads(message.payload)
                        if reply.get("command", "").startswith(json.dumps(command)[:200]):
                            return str(reply.get("error"))
        except TimeoutError:
            return None
    return None


async def list_faults(run_id: str, url: BrokerURL | Sequence[BrokerURL]) -> dict[str, Any]:
    """The run's retained fault list."""
    topics = Topics(run_id)
    async with MqttTransport(url, client_id=f"orbitmesh-cli-{os.getpid()}") as transport:
        await transport.subscribe(topics.faults)
        try:
            async with asyncio.timeout(REPLY_WAIT_S * 2):
                async for batch in transport.batches():
                    for message in batch:
                        if message.payload:
                            listing: dict[str, Any] = json.loads(message.payload)
                            return listing
        except TimeoutError:
            pass
    where = url.address if isinstance(url, BrokerURL) else ", ".join(u.address for u in url)
    raise RunError(f"run {run_id!r} published no fault list on {where}; is it running?")
