"""Helpers shared by the live benchmarks (bench/messaging.py, bench/scale.py).

Everything here runs on this machine only: brokers bind 127.0.0.1, processes are tracked by PID.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from orbitmesh.protocol import mqtt  # noqa: E402  (after the path setup above)
from orbitmesh.run.report import load_worker_stats as report_load_worker_stats  # noqa: E402

RSS_INTERVAL_S = 0.5


def emit(record: dict[str, Any]) -> None:
    """Print one benchmark result as one JSON line."""
    print(json.dumps(record), flush=True)


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (VmRSS), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class ProcSampler:
    """Samples RSS and CPU time of a changing set of PIDs every 0.5 s on a thread.

    ``pids()`` (role -> PID) is called at every sample, so workers that appear later
    (pids.json) are counted from the moment they are known. Keeps the peak of the summed RSS,
    the peak per role, and the last CPU seconds (user + system) seen per role.
    """

    def __init__(self, pids: Any, interval_s: float = RSS_INTERVAL_S) -> None:
        self._pids = pids
        self.interval_s = interval_s
        self.peak_total_mb = 0.0
        self.peak_by_role: dict[str, float] = {}
        self.at_peak: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}
        """CPU seconds (user + system) each role used while sampled (from its first sample)."""
        self.foreign_cpu_s = 0.0
        """CPU seconds the rest of the machine used meanwhile (other users' load skews figures)."""
        self.samples = 0
        self._baseline: dict[str, float] = {}
        self._machine_busy0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench.proc", daemon=True)

    def __enter__(self) -> ProcSampler:
        for role, pid in self._pids().items():
            value = cpu_s(pid)
            if value is not None:
                self._baseline[role] = value
        self._machine_busy0 = machine_busy_s()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        ours = sum(self.cpu_s.values())
        self.foreign_cpu_s = max(0.0, machine_busy_s() - self._machine_busy0 - ours)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        """Take one sample now."""
        sample: dict[str, float] = {}
        for role, pid in self._pids().items():
            value = rss_mb(pid)
            cpu = cpu_s(pid)
            if cpu is not None:
                self.cpu_s[role] = cpu - self._baseline.get(role, 0.0)
            if value is not None:
                sample[role] = value
                self.peak_by_role[role] = max(self.peak_by_role.get(role, 0.0), value)
        total = sum(sample.values())
        self.samples += 1
        if total > self.peak_total_mb:
            self.peak_total_mb = total
            self.at_peak = sample


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used (its own threads, not its children)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat, everything but idle+iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / _CLK_TCK


class MessageTap:
    """A raw MQTT 3.1.1 subscriber on a thread that counts PUBLISH packets and their bytes.

    It is one more subscriber on the broker (each message it counts is routed twice), so keep
    it to runs where that extra fan-out is small beside the broker's capacity.
    """

    def __init__(self, host: str, port: int, topic_filter: str) -> None:
        self.host, self.port, self.topic_filter = host, port, topic_filter
        self.messages = 0
        self.payload_bytes = 0
        self.cpu_s = 0.0
        """CPU seconds the tap thread itself used (to subtract from its process's figure)."""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench.tap", daemon=True)
        self.error: str | None = None

    def __enter__(self) -> MessageTap:
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError(f"message tap: no SUBACK from {self.host}:{self.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=10)
            sock.sendall(mqtt.encode_connect(f"bench-tap-{os.getpid()}", keepalive_s=60))
            sock.sendall(mqtt.encode_subscribe(1, [(self.topic_filter, 0)]))
            sock.settimeout(0.2)
            # Each PUBLISH becomes its payload size: counting needs nothing else.
            reader = mqtt.PacketReader(message=lambda topic, payload, retain: len(payload))
            sizes: list[int] = []
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                for packet in reader.feed_split(chunk, sizes):
                    if isinstance(packet, mqtt.Suback):
                        self._ready.set()
                self.messages += len(sizes)
                self.payload_bytes += sum(sizes)
                sizes.clear()
            sock.sendall(mqtt.encode_disconnect())
            sock.close()
        except OSError as exc:
            self.error = str(exc)
            self._ready.set()
        finally:
            self.cpu_s = time.thread_time()


def worker_pids(run_dir: Path) -> dict[str, int]:
    """Worker PIDs recorded by the launcher in ``<run>/pids.json`` (empty until it exists)."""
    try:
        raw = json.loads((run_dir / "pids.json").read_text())
    except (OSError, ValueError):
        return {}
    return {(f"w{k}" if str(k).isdigit() else str(k)): int(v) for k, v in raw.items()}


load_worker_stats = report_load_worker_stats


def total_frame_hops(stats: list[dict[str, Any]]) -> int:
    """Hops travelled by every delivered frame (all flows, telemetry and commands included)."""
    return sum(f["hops"] for w in stats for f in w["flows"].values())


def unexplained_loss(summary: dict[str, Any]) -> int:
    """Offered - delivered - dropped-with-reason - in flight, summed over every flow."""
    return sum(int(c["unexplained"]) for c in summary["conservation"])


def clock_age(started: float) -> float:
    """Seconds since ``started`` (time.time())."""
    return time.time() - started


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    load1, _, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m_before": round(load1, 2),
            "python": sys.version.split()[0]}
