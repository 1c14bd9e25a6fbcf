"""A private MQTT broker on a loopback port: mosquitto when installed, amqtt otherwise.

The broker runs as a child process with a generated config in its own temp directory. It is
tracked by PID only (never by name), becomes ready when it answers a real MQTT CONNECT with a
CONNACK, and can be stopped, paused (SIGSTOP) and restarted on the same port to emulate broker
outages.

Given ``credentials`` (:class:`broker.credentials.RunCredentials`), mosquitto refuses anonymous
clients and enforces the run's ACL; given ``tls`` (:class:`broker.certs.ServerTLS`), its one
listener speaks TLS only. Without either it is open to every local process, which tests and
``orbitmesh run --broker-insecure`` ask for. The amqtt fallback is always open and says so.
mosquitto_conf.py finds mosquitto and renders its config.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

from broker.certs import ServerTLS
from broker.credentials import RunCredentials, render_acl, render_password_file, write_private
from broker.lifetime import pdeathsig_in_child
from broker.mosquitto_conf import find_mosquitto, render_mosquitto_config, security_lines
from broker.url import BrokerURL
from orbitmesh.errors import BrokerError

log = logging.getLogger(__name__)

Engine = Literal["auto", "mosquitto", "amqtt"]

NO_MOSQUITTO_WARNING = (
    "mosquitto not found; using the slower pure-Python amqtt broker. "
    "Install mosquitto: apt-get install mosquitto"
)
AMQTT_OPEN_WARNING = (
    "the amqtt fallback broker is OPEN: it admits anonymous clients and has no ACL, so any local "
    "process can inject frames, forge the clock and state, or stop the run. Install mosquitto "
    "(apt-get install mosquitto) for per-run credentials"
)
_POLL_INTERVAL_S = 0.02
_PORT_ATTEMPTS = 5


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def probe_connack(host: str, port: int, timeout_s: float = 1.0,
                  tls: ssl.SSLContext | None = None) -> bool:
    """True when something at host:port answers an MQTT 3.1.1 CONNECT with a CONNACK."""
    client_id = f"orbitmesh-probe-{os.getpid()}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x00"  # protocol 3.1.1, clean session, keepalive 0
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    connect = bytes([0x10, len(body)]) + body
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout_s))
            if tls is not None:
                sock = stack.enter_context(tls.wrap_socket(sock, server_hostname=host))
            sock.sendall(connect)
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            if reply[0] != 0x20:
                return False
            if reply[3] == 0:
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs no error
            return True  # even a refusal (e.g. "not authorised") proves the broker is up
    except OSError:
        return False


class EmbeddedBroker:
    """A private broker child process on a loopback port; a sync context manager."""

    def __init__(
        self,
        *,
        port: int | None = None,
        bind: str = "127.0.0.1",
        engine: Engine = "auto",
        workdir: Path | None = None,
        start_timeout_s: float = 10.0,
        stop_grace_s: float = 3.0,
        extra_config: Sequence[str] = (),
        credentials: RunCredentials | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        self._port = port
        self.credentials = credentials
        self.tls = tls
        self.bind = bind
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self._extra_config = tuple(extra_config)
        self._own_workdir = workdir is None
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self.engine: Literal["mosquitto", "amqtt"]
        self._mosquitto = find_mosquitto() if engine in ("auto", "mosquitto") else None
        if engine == "mosquitto" and self._mosquitto is None:
            raise BrokerError(
                "mosquitto is not installed (looked on PATH and in /usr/sbin); "
                "install it with: apt-get install mosquitto"
            )
        if self._mosquitto is not None:
            self.engine = "mosquitto"
        else:
            self.engine = "amqtt"
            if engine == "auto":
                log.warning(NO_MOSQUITTO_WARNING)
            if tls is not None:
                raise BrokerError("the amqtt fallback broker has no TLS listener here; install "
                                  "mosquitto (apt-get install mosquitto) or drop --tls")
            log.warning(AMQTT_OPEN_WARNING)

    # -- public state ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the broker listens on (fixed after the first start)."""
        if self._port is None:
            raise BrokerError("embedded broker: not started yet, so it has no port")
        return self._port

    @property
    def url(self) -> BrokerURL:
        """Where clients reach this broker (loopback when it listens on every interface)."""
        host = "127.0.0.1" if self.bind in ("", "0.0.0.0") else self.bind
        if self.tls is not None:
            return BrokerURL(host=host, port=self.port, scheme="mqtts",
                             ca_file=str(self.tls.ca_file))
        return BrokerURL(host=host, port=self.port)

    @property
    def locked(self) -> bool:
        """True when the broker refuses anonymous clients (per-run credentials and ACL)."""
        return self.credentials is not None and self.engine == "mosquitto"

    @property
    def pid(self) -> int | None:
        """PID of the running broker process, or None when stopped."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process exists (also when paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of a broker process that has ended (negative: the signal); else None."""
        return None if self._proc is None else self._proc.poll()

    @property
    def workdir(self) -> Path:
        """Directory holding the generated config and the broker log."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="orbitmesh-broker-"))
        return self._workdir

    @property
    def log_path(self) -> Path:
        """The broker's log file (its stderr and stdout)."""
        return self.workdir / f"{self.engine}.log"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the broker log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> BrokerURL:
        """Start the broker and return once it answers CONNECT; BrokerError if it cannot."""
        if self.running:
            return self.url
        # A port we picked ourselves may be taken before the broker binds it: pick again.
        # A port that was fixed (by the caller, or by an earlier start) is never changed.
        attempts = _PORT_ATTEMPTS if self._port is None else 1
        for attempt in range(1, attempts + 1):
            if self._port is None or attempt > 1:
                self._port = free_loopback_port(self.bind)
            try:
                self._spawn_and_wait()
                return self.url
            except _PortTaken:
                if attempt == attempts:
                    raise BrokerError(
                        f"embedded {self.engine}: port {self._port} on {self.bind} is in use; "
                        f"pick another port or stop what holds it. Log:\n{self.log_tail()}"
                    ) from None
                log.debug("port %s was taken before the broker bound it; retrying", self._port)
        return self.url

    def stop(self) -> None:
        """Terminate the broker by PID (SIGTERM, SIGKILL after a grace); safe to call twice."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            if self._paused:
                # A stopped process keeps SIGTERM pending until it runs again.
                proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                log.warning("broker pid %s ignored SIGTERM for %.1f s; killing it",
                            proc.pid, self.stop_grace_s)
                proc.kill()
                proc.wait()
        self._paused = False

    def restart(self) -> BrokerURL:
        """Stop the broker and start it again on the same port (clients must reconnect)."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self._proc is None or not self.running:
            raise BrokerError("embedded broker: cannot pause, it is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused broker run again (SIGCONT)."""
        if self._proc is not None and self.running and self._paused:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop the broker and delete its temp directory (if this object created it)."""
        self.stop()
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> EmbeddedBroker:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(engine={self.engine!r}, port={self._port}, pid={self.pid})"

    # -- internals ---------------------------------------------------------------------------

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        port = self.port
        if self.engine == "mosquitto":
            assert self._mosquitto is not None
            config = self.workdir / "mosquitto.conf"
            config.write_text(render_mosquitto_config(
                port, bind=self.bind, extra=self._extra_config, security=self._security()))
            return [self._mosquitto, "-c", str(config)], None
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "broker.amqtt_runner", "--host", self.bind, "--port",
               str(port)]
        return cmd, env

    def _security(self) -> list[str] | None:
        if self.credentials is None and self.tls is None:
            return None
        password_file = acl_file = None
        if self.credentials is not None:
            password_file = write_private(self.workdir / "passwords",
                                          render_password_file(self.credentials))
            acl_file = write_private(self.workdir / "acl", render_acl(self.credentials))
        return security_lines(password_file=password_file, acl_file=acl_file, tls=self.tls)

    def _probe_tls(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca_file))

    def _spawn_and_wait(self) -> None:
        cmd, env = self._command()
        probe_tls = self._probe_tls()
        with self.log_path.open("ab") as log_file:
            log_offset = log_file.tell()
            # Same process group as the owner: a signal to the group (Ctrl-C, `timeout`, a CI
            # job being killed) ends the broker too, even when the owner gets no chance to.
            # And the kernel ends it if the owner dies without a word (kill -9). The hook is one
            # prctl call through a preloaded libc: nothing in it can wait on another thread's
            # lock, which is what makes preexec_fn unsafe in general.
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=env, preexec_fn=pdeathsig_in_child,  # noqa: PLW1509
            )
        (self.workdir / "broker.pid").write_text(f"{self._proc.pid}\n")
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()  # forget the dead process
                if "in use" in self._log_since(log_offset).lower():
                    raise _PortTaken
                tail = self.log_tail()
                raise BrokerError(
                    f"embedded {self.engine} exited with code {code} while starting on "
                    f"{self.bind}:{self.port}. Log ({self.log_path}):\n{tail}"
                )
            if probe_connack(self.url.host, self.port, timeout_s=0.5, tls=probe_tls):
                log.debug("embedded %s ready on %s:%s (pid %s)", self.engine, self.bind,
                          self.port, self._proc.pid)
                return
            time.sleep(_POLL_INTERVAL_S)
        pid = self._proc.pid
        self.stop()
        raise BrokerError(
            f"embedded {self.engine} (pid {pid}) did not accept MQTT connections on "
            f"{self.bind}:{self.port} within {self.start_timeout_s:.0f} s; "
            f"it was stopped. Log ({self.log_path}):\n{self.log_tail()}"
        )

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(offset)
                return log_file.read().decode(errors="replace")
        except OSError:
            return ""


class _PortTaken(Exception):
    """The chosen port was taken between picking it and the broker binding it."""
