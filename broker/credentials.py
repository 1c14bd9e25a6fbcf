"""Per-run broker credentials and the mosquitto password and ACL files that enforce them.

A locked-down run has one user per role, each named ``<run>-<role>``:

* ``<run>-controller`` publishes the clock, state, links, faults, control, control/error and
  launcher topics and clears the workers' retained status at the end;
* ``<run>-worker-K`` (one user per worker) publishes only its own status, the frame topics and
  the node outboxes (MQTT endpoints);
* ``<run>-operator`` publishes commands on the control topic and frames into node inboxes.

Every one of them may read everything under ``orbitmesh/<run>/``; anonymous clients are refused
(``allow_anonymous false``). Passwords are random per run and live only in files of mode 0600
in the run directory; :func:`write_private` is the one way this package writes such a file.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.url import BrokerURL
from orbitmesh.errors import BrokerError
from orbitmesh.protocol.wire import Topics

CREDENTIALS_VERSION = 1
PBKDF2_ITERATIONS = 101
"""mosquitto_passwd's own default (2.0.x); the passwords are 32 random bytes, so a higher count
would only slow every CONNECT without making a guess any likelier."""
_SALT_BYTES = 12
_HASH_BYTES = 64
_PASSWORD_BYTES = 32


@dataclass(frozen=True)
class Credential:
    """One broker user; ``repr()`` never shows the password."""

    username: str
    password: str = field(repr=False)

    def on(self, url: BrokerURL) -> BrokerURL:
        """``url`` with this user and password (host, port and TLS settings unchanged)."""
        return dataclasses.replace(url, username=self.username, password=self.password)


@dataclass(frozen=True)
class RunCredentials:
    """The users of one run: controller, operator and one per worker."""

    run_id: str
    controller: Credential
    operator: Credential
    workers: tuple[Credential, ...]

    @classmethod
    def generate(cls, run_id: str, workers: int) -> RunCredentials:
        """Fresh random passwords for a run with ``workers`` workers."""
        Topics(run_id)  # the run id must be topic-safe, or the ACL would not mean what it says
        if workers < 1:
            raise BrokerError(f"credentials for run {run_id!r}: need at least one worker")

        def make(role: str) -> Credential:
            return Credential(f"{run_id}-{role}", secrets.token_urlsafe(_PASSWORD_BYTES))

        return cls(run_id, make("controller"), make("operator"),
                   tuple(make(f"worker-{k}") for k in range(workers)))

    def worker(self, index: int) -> Credential:
        """Worker ``index``'s credential; BrokerError when the run has no such worker."""
        if not 0 <= index < len(self.workers):
            raise BrokerError(f"run {self.run_id!r} has credentials for workers 0.."
                              f"{len(self.workers) - 1}, not worker {index}; generate them for "
                              "as many workers as the run starts")
        return self.workers[index]

    def all(self) -> tuple[Credential, ...]:
        """Every user of the run."""
        return (self.controller, self.operator, *self.workers)

    def to_json(self) -> str:
        """The credentials file's text (holds passwords: write it with write_private)."""
        def one(c: Credential) -> dict[str, str]:
            return {"username": c.username, "password": c.password}

        return json.dumps({"version": CREDENTIALS_VERSION, "run_id": self.run_id,
                           "controller": one(self.controller), "operator": one(self.operator),
                           "workers": [one(w) for w in self.workers]}, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> RunCredentials:
        """Read a credentials file; BrokerError naming the file and field when it is wrong."""
        body = _read_json(path)
        if body.get("version") != CREDENTIALS_VERSION:
            raise BrokerError(f"{path}: version {body.get('version')!r}; this orbitmesh reads "
                              f"credentials files of version {CREDENTIALS_VERSION}")
        workers = body.get("workers")
        if not isinstance(workers, list) or not workers:
            raise BrokerError(f"{path}: field 'workers': expected a non-empty list of users")
        return cls(_field_str(body, "run_id", path), read_credential(body, "controller", path),
                   read_credential(body, "operator", path),
                   tuple(read_credential({"w": w}, "w", path, f"workers[{k}]")
                         for k, w in enumerate(workers)))


def read_credential(body: dict[str, Any], key: str, path: Path, name: str | None = None
                    ) -> Credential:
    """``body[key]`` as a Credential; BrokerError naming ``path`` and the field when malformed."""
    entry = body.get(key)
    label = name or key
    if not isinstance(entry, dict):
        raise BrokerError(f"{path}: field {label!r}: expected {{\"username\": ..., "
                          "\"password\": ...}")
    return Credential(_field_str(entry, "username", path, label),
                      _field_str(entry, "password", path, label))


def load_operator(path: Path) -> Credential:
    """The operator credential from an ``operator.json`` (or a full credentials file)."""
    body = _read_json(path)
    return read_credential(body, "operator", path)


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """mosquitto's ``$7$`` password hash (PBKDF2-HMAC-SHA512), as mosquitto_passwd writes it."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_BYTES)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def render_password_file(creds: RunCredentials) -> str:
    """mosquitto ``password_file`` text: one ``user:hash`` line per user of the run."""
    return "".join(f"{c.username}:{hash_password(c.password)}\n" for c in creds.all())


def render_acl(creds: RunCredentials) -> str:
    """mosquitto ``acl_file`` text: what each role of the run may publish; all may read."""
    t = Topics(creds.run_id)
    # Topics has no wildcard over the frame topics; this is the one place that needs it.
    frames_all = f"{t.root}/worker/+/frames"
    grants: list[tuple[Credential, list[str]]] = [
        (creds.controller, [t.clock, t.state, t.links, t.faults, t.control, t.control_error,
                            t.launcher, t.worker_status_all]),
        (creds.operator, [t.control, t.node_inbox("+")]),
        *((w, [t.worker_status(k), frames_all, t.node_outbox("+")])
          for k, w in enumerate(creds.workers)),
    ]
    lines = [f"# generated by orbitmesh for run {creds.run_id}: one user per role, "
             "anonymous clients are refused"]
    for cred, topics in grants:
        lines += ["", f"user {cred.username}", f"topic read {t.root}/#",
                  *(f"topic write {topic}" for topic in topics)]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path


def write_operator_file(path: Path, cred: Credential, url: BrokerURL) -> Path:
    """Write the operator's credential (and where the broker is) to a 0600 file."""
    return write_private(path, json.dumps(
        {"broker": url.to_text(show_password=False),
         "operator": {"username": cred.username, "password": cred.password}}, indent=2) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except OSError as exc:
        raise BrokerError(f"{path}: cannot read the credentials file: {exc.strerror}") from exc
    except ValueError as exc:
        raise BrokerError(f"{path}: not JSON ({exc}); expected an orbitmesh credentials "
                          "file") from exc
    if not isinstance(body, dict):
        raise BrokerError(f"{path}: expected a JSON object")
    return body


def _field_str(body: dict[str, Any], key: str, path: Path, within: str | None = None) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        where = f"{within}.{key}" if within else key
        raise BrokerError(f"{path}: field {where!r}: expected a non-empty string")
    return value
