"""``orbitmesh broker-config``: users, ACL and TLS files for a run on an operator's own mosquitto.

``orbitmesh broker-config SCENARIO --run-id ID -o DIR [--workers N] [--tls-host HOST ...]
[--client-certs]`` writes into DIR:

* ``passwords`` and ``acl``: mosquitto ``password_file`` / ``acl_file`` for the run's users
  (``ID-controller``, ``ID-operator``, ``ID-worker-K``), anonymous clients refused;
* ``mosquitto.conf``: a listener block that uses them (include it, or copy its lines);
* ``credentials.json`` (0600): every user's password, for
  ``orbitmesh run SCENARIO --run-id ID --workers N --broker mqtt[s]://HOST:PORT
  --broker-credentials DIR/credentials.json``;
* ``operator.json`` (0600): the operator's credential alone, for whoever drives the run;
* with ``--tls-host``: ``tls/ca.pem`` (clients: ``?ca=DIR/tls/ca.pem``), ``tls/server.pem`` and
  ``tls/server.key`` for those host names; with ``--client-certs`` also one client certificate
  per user (``tls/ID-worker-0.pem`` ...; clients: ``&cert=...&key=...``) and the listener
  requires one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8883
PLAIN_PORT = 1883


def add_parser(sub: Any) -> None:
    """Register ``broker-config`` on the CLI's sub-command parser."""
    b = sub.add_parser("broker-config", help="ACL, password file and TLS files for a run on "
                       "your own mosquitto", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("scenario")
    b.add_argument("--run-id", required=True, help="the run id the run will use (--run-id)")
    b.add_argument("-o", "--out", required=True, help="directory to write the files to")
    b.add_argument("--workers", type=int, help="worker processes (default: CPU count, as run)")
    b.add_argument("--placement", default="blocks", help="as `orbitmesh run --placement`")
    b.add_argument("--tls-host", action="append", default=[], metavar="HOST",
                   help="make a CA and a server certificate for HOST (repeatable)")
    b.add_argument("--client-certs", action="store_true",
                   help="with --tls-host: a client certificate per user; the listener requires "
                   "one")
    b.add_argument("--port", type=int, help="listener port in mosquitto.conf "
                   f"(default: {DEFAULT_PORT} with TLS, {PLAIN_PORT} without)")
    b.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    from orbitmesh.core.placement import worker_count
    from orbitmesh.core.scenario import load_scenario
    from orbitmesh.core.topology import build_topology
    from orbitmesh.errors import BrokerError

    if args.client_certs and not args.tls_host:
        raise BrokerError("--client-certs needs --tls-host HOST (client certificates are TLS)")
    topology = build_topology(load_scenario(Path(args.scenario)))
    workers = worker_count(topology, args.placement, args.workers or os.cpu_count() or 1)
    out = Path(args.out).resolve()
    written = write_broker_config(out, args.run_id, workers, args.tls_host,
                                  client_certs=args.client_certs, port=args.port)
    print(f"broker config for run {args.run_id} ({workers} workers) in {out}:")
    for path in written:
        print(f"  {path.relative_to(out)}")
    broker = f"mqtts://HOST:PORT?ca={out / 'tls' / 'ca.pem'}" if args.tls_host else (
        "mqtt://HOST:PORT")
    print(f"then: orbitmesh run {args.scenario} --run-id {args.run_id} --workers {workers} "
          f"--broker {broker} --broker-credentials {out / 'credentials.json'}")
    return 0


def write_broker_config(out: Path, run_id: str, workers: int, tls_hosts: list[str],
                        *, client_certs: bool = False, port: int | None = None) -> list[Path]:
    """Write the run's users, ACL, mosquitto.conf and (with ``tls_hosts``) TLS files to ``out``."""
    # Imported here, not at the top: every `orbitmesh` command registers this one's parser,
    # and cryptography and the wire codec cost a contacts or run command ~0.3 s for nothing.
    from broker.certs import make_ca, make_client_cert, make_server_cert
    from broker.credentials import (
        RunCredentials,
        render_acl,
        render_password_file,
        write_operator_file,
        write_private,
    )
    from broker.mosquitto_conf import security_lines
    from broker.url import BrokerURL

    creds = RunCredentials.generate(run_id, workers)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    written = [write_private(out / "passwords", render_password_file(creds))]
    acl = out / "acl"
    acl.write_text(render_acl(creds))
    written += [acl, write_private(out / "credentials.json", creds.to_json())]
    host = tls_hosts[0] if tls_hosts else "127.0.0.1"
    listen_port = port or (DEFAULT_PORT if tls_hosts else PLAIN_PORT)
    url = BrokerURL(host, listen_port, "mqtts" if tls_hosts else "mqtt")
    written.append(write_operator_file(out / "operator.json", creds.operator, url))
    tls = None
    if tls_hosts:
        tls_dir = out / "tls"
        written.append(make_ca(tls_dir, run_id))
        tls = make_server_cert(tls_dir, tls_hosts)
        written += [tls.cert_file, tls.key_file]
        if client_certs:
            for cred in creds.all():
                written += make_client_cert(tls_dir, cred.username)
    lines = [f"# orbitmesh run {run_id}: a listener for its users only",
             f"listener {listen_port}",
             # "user root" is for the embedded broker only; an installed one keeps its user.
             *(line for line in security_lines(password_file=out / "passwords", acl_file=acl,
                                               tls=tls) if line != "user root")]
    if client_certs:
        lines.append("require_certificate true")
    conf = out / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    written.append(conf)
    return written
