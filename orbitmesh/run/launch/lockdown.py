"""The broker of a local run, locked down: per-run users and ACL, optional TLS, secrets in files.

Embedded (the default): mosquitto with a fresh password per role (controller, operator, one per
worker) and an ACL, anonymous clients refused; ``--tls`` adds a run CA and a TLS-only listener;
``--broker-insecure`` gives today's open loopback broker and says so. External: the URL as given,
or with ``--broker-credentials`` (from ``orbitmesh broker-config``) one user per role, or
``--broker-file`` (the controller container of `orbitmesh up`: its own URL, password included,
in a 0600 file; the launcher wrote ``run.json`` and the operator file).

Secrets live in ``<run>/broker/`` in files of mode 0600: ``credentials.json`` (every role, for
the launcher), ``operator.json`` (the operator only: hand it to whoever drives the run) and
``worker-K.url`` (written when worker K starts). ``run.json`` names the operator file, never a
password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Protocol

from broker import check_broker
from broker.certs import make_run_tls
from broker.credentials import RunCredentials, write_operator_file, write_private
from broker.embedded import EmbeddedBroker
from broker.url import BrokerURL, parse_broker_url, resolve_broker_urls
from orbitmesh.errors import BrokerError
from orbitmesh.run.launch.control import RUN_FILE, write_run_file

CREDENTIALS_FILE = "credentials.json"
OPERATOR_FILE = "operator.json"


class BrokerOptions(Protocol):
    """The parts of RunOptions that decide the broker."""

    broker: str
    broker_members: tuple[str, ...]
    broker_insecure: bool
    tls: bool
    broker_credentials: Path | None
    broker_file: Path | None
    scenario: Path


def start_broker(opts: BrokerOptions, run_dir: Path, run_id: str, workers: int
                 ) -> tuple[EmbeddedBroker | None, BrokerURL, RunCredentials | None, str]:
    """Start or check the run's broker; (embedded broker, controller URL, users, label).

    Writes ``run.json`` once the broker answers, and prints where the operator credential is.
    """
    broker_dir = run_dir / "broker"
    broker_dir.mkdir(exist_ok=True)
    if opts.broker_members:
        return _cluster(opts, run_dir, run_id)
    if opts.broker_file is not None:
        return _from_file(opts, opts.broker_file, run_dir, run_id)
    if opts.broker == "embedded":
        return _embedded(opts, broker_dir, run_dir, run_id, workers)
    if opts.broker_insecure or opts.tls:
        raise BrokerError("--broker-insecure and --tls apply to the embedded broker; for an "
                       "external one put credentials and ca=/cert=/key= in --broker or use "
                       "--broker-credentials")
    url = parse_broker_url(opts.broker)
    credentials = None
    if opts.broker_credentials is not None:
        credentials = RunCredentials.load(opts.broker_credentials)
        _check_fits(credentials, opts.broker_credentials, run_id, workers)
        url = credentials.controller.on(url)
    asyncio.run(check_broker(url))
    operator = _publish_operator(broker_dir, credentials, url)
    write_run_file(run_dir, run_id, _bare(url), str(opts.scenario), operator)
    return None, url, credentials, str(_bare(url))


def _from_file(opts: BrokerOptions, path: Path, run_dir: Path, run_id: str
               ) -> tuple[None, BrokerURL, None, str]:
    """``--broker-file``: the controller's own URL from a 0600 file (a container of `up`).

    The launcher that wrote the file also wrote ``run.json`` naming the operator's credential
    file, which this controller cannot see; that entry is kept.
    """
    if opts.broker not in ("embedded", "") or opts.broker_insecure or opts.tls or (
            opts.broker_credentials is not None):
        raise BrokerError("--broker-file holds the broker URL: give no --broker, "
                          "--broker-insecure, --tls or --broker-credentials with it")
    url = resolve_broker_urls(None, path)[0]
    asyncio.run(check_broker(url))
    operator = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads((run_dir / RUN_FILE).read_text()).get("operator_credentials")
        operator = str(recorded) if recorded else None
    write_run_file(run_dir, run_id, _bare(url), str(opts.scenario), operator)
    return None, url, None, str(_bare(url))


def _cluster(opts: BrokerOptions, run_dir: Path, run_id: str
             ) -> tuple[None, BrokerURL, None, str]:
    """Several --broker: a clustered broker's members, each checked; member 0 for the label."""
    if "embedded" in opts.broker_members:
        raise BrokerError("--broker embedded cannot be one of several --broker members; give "
                          "every member's mqtt://host:port (`orbitmesh broker cluster up` "
                          "starts a local NATS cluster and prints them)")
    if opts.broker_insecure or opts.tls or opts.broker_credentials is not None:
        raise BrokerError("--broker-insecure, --tls and --broker-credentials are not supported "
                          "with a clustered broker yet; give the members' URLs alone")
    members = [parse_broker_url(text) for text in opts.broker_members]
    for index, url in enumerate(members):
        try:
            asyncio.run(check_broker(url))
        except BrokerError as exc:
            raise BrokerError(f"--broker member {index} of {len(members)}: {exc}") from exc
    label = f"cluster of {len(members)} members ({', '.join(m.address for m in members)})"
    print(f"broker: {label}: OPEN (no per-run users or ACL on a cluster yet); worker k uses "
          "member k mod M first, every client fails over", file=sys.stderr, flush=True)
    write_run_file(run_dir, run_id, _bare(members[0]), str(opts.scenario), None,
                   [_bare(m) for m in members])
    return None, members[0], None, label


def _embedded(opts: BrokerOptions, broker_dir: Path, run_dir: Path, run_id: str, workers: int
              ) -> tuple[EmbeddedBroker, BrokerURL, RunCredentials | None, str]:
    if opts.broker_insecure and opts.tls:
        raise BrokerError("--broker-insecure and --tls do not go together: TLS without "
                       "credentials would still admit every local process")
    if opts.broker_credentials is not None:
        raise BrokerError("--broker-credentials is for an external --broker; the embedded broker "
                       "makes its own")
    credentials = None if opts.broker_insecure else RunCredentials.generate(run_id, workers)
    tls = make_run_tls(broker_dir / "tls", run_id) if opts.tls else None
    broker = EmbeddedBroker(workdir=broker_dir, credentials=credentials, tls=tls)
    base = broker.start()
    if not broker.locked:
        credentials = None  # the amqtt fallback admits anyone (it warned loudly)
    if credentials is not None:
        write_private(broker_dir / CREDENTIALS_FILE, credentials.to_json())
    operator = _publish_operator(broker_dir, credentials, base)
    label = f"embedded {broker.engine} on {base.address}"
    if credentials is not None:
        security = "per-run users and ACL, anonymous refused"
    elif opts.broker_insecure:
        security = ("OPEN (--broker-insecure): anonymous clients, no ACL; any local process "
                    "can inject frames, forge the clock or stop the run")
    else:
        security = "OPEN: the amqtt fallback has no users or ACL"
    tls_note = f", TLS (CA {tls.ca_file})" if tls is not None else ""
    print(f"broker: {label}: {security}{tls_note}", file=sys.stderr, flush=True)
    if operator is not None and credentials is not None:
        print(f"operator credentials: {broker_dir / OPERATOR_FILE} (user "
              f"{credentials.operator.username}; `orbitmesh fault RUN_DIR ...` reads it)",
              file=sys.stderr, flush=True)
    write_run_file(run_dir, run_id, base, str(opts.scenario), operator)
    url = base if credentials is None else credentials.controller.on(base)
    return broker, url, credentials, label + (" (TLS)" if tls is not None else "")


def _publish_operator(broker_dir: Path, credentials: RunCredentials | None, url: BrokerURL
                      ) -> str | None:
    """Write operator.json; its path relative to the run directory (None: no credentials)."""
    if credentials is None:
        return None
    write_operator_file(broker_dir / OPERATOR_FILE, credentials.operator, _bare(url))
    return f"{broker_dir.name}/{OPERATOR_FILE}"


def _check_fits(credentials: RunCredentials, path: Path, run_id: str, workers: int) -> None:
    if credentials.run_id != run_id:
        raise BrokerError(f"{path}: field 'run_id' is {credentials.run_id!r}, but this run's id is "
                       f"{run_id!r}; pass --run-id {credentials.run_id} (the ACL names its "
                       "topics)")
    if len(credentials.workers) < workers:
        raise BrokerError(f"{path}: field 'workers' has {len(credentials.workers)} users, this "
                       f"run starts {workers} workers; pass --workers "
                       f"{len(credentials.workers)} or regenerate with broker-config --workers")


def _bare(url: BrokerURL) -> BrokerURL:
    """``url`` without user and password (for run.json and messages)."""
    return BrokerURL(url.host, url.port, url.scheme, ca_file=url.ca_file,
                     tls_insecure=url.tls_insecure, cert_file=url.cert_file,
                     key_file=url.key_file)
