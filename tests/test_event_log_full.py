"""A full disk under a worker's event log: the log stops at its last whole record with one clear
line, counting goes on, the stats say ``events_truncated_at``, and `trace info` reports the trace
as truncated by a full disk instead of silently short (a tiny tmpfs; root only)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from nodes.stats import Stats
from orbitmesh.protocol.wire import new_frame
from orbitmesh.run.cli import main
from orbitmesh.run.trace import FULL_DISK
from orbitmesh.run.trace_info import format_info, trace_info

DISK_SIZE = "300k"
FRAMES = 20_000
"""Offered and delivered: ~1.5 MB of records, five times what the disk holds."""


@contextlib.contextmanager
def tiny_disk(where: Path, size: str = DISK_SIZE) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (skips unless root); unmounted on the way out."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _manifest() -> dict[str, object]:
    return {"format": "orbitmesh-trace", "version": "1.0", "run_id": "full", "scenario": "x",
            "epoch": "2026-01-01T00:00:00Z", "speed": 1.0, "duration_s": 100.0, "tick_s": 1.0,
            "seed": 1, "t0_wall": 1000.0, "node_ids": ["a", "b"],
            "flows": [{"index": 0, "name": "a-b", "source": "a", "destination": "b",
                       "policy": None}],
            "builtin_flows": {}, "faults": [], "complete": True, "interrupted": False}


def _fill(stats: Stats) -> None:
    for i in range(FRAMES):
        frame = new_frame(i, 0, 0, 0, 1, 1000, 1000.0 + i * 0.001)
        stats.clock(frame[6])
        stats.offer(frame)
        stats.deliver(frame, frame[6] + 0.01)


def test_a_full_disk_truncates_the_event_log_at_a_record_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with tiny_disk(tmp_path / "disk") as disk:
        log_path = disk / "events-w0.msgpack"
        stats = Stats(log_path.open("wb"))
        with caplog.at_level(logging.WARNING, logger="orbitmesh.worker"):
            _fill(stats)
            stats.close_events()
        body = log_path.read_bytes()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "No space left on device" in errors[0].getMessage()
    # Counting went on past the full disk.
    assert stats.flows[0].offered == FRAMES and stats.flows[0].delivered == FRAMES
    cut = stats.as_dict()["events_truncated_at"]
    assert cut["bytes"] == len(body) and cut["error"] == "No space left on device"
    # The file ends at a whole record: everything in it decodes, nothing after the cut.
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body)
    records = list(unpacker)
    assert unpacker.tell() == len(body)
    assert 0 < len(records) < 2 * FRAMES
    print(f"kept {len(records)} of {2 * FRAMES} records ({len(body)} bytes) on a {DISK_SIZE} disk")

    (run_dir / "events-w0.msgpack").write_bytes(body)
    (run_dir / "trace.json").write_text(json.dumps(_manifest()))
    (run_dir / "stats-w0.json").write_text(json.dumps({**stats.as_dict(), "worker": 0,
                                                       "final": True}))
    info = trace_info(run_dir)
    (damage,) = info["damage"]
    assert damage["problem"].startswith(FULL_DISK) and damage["offset"] == len(body)
    assert f"{2 * FRAMES - len(records)} more" in damage["problem"]
    assert format_info(info).splitlines()[1].startswith(f"status: {FULL_DISK}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["trace", "info", str(run_dir)]) == 2
        assert main(["trace", "info", "--salvage", str(run_dir)]) == 0
    assert FULL_DISK in err.getvalue()


def test_a_log_that_fits_says_nothing_of_a_full_disk(tmp_path: Path) -> None:
    path = tmp_path / "events-w0.msgpack"
    stats = Stats(path.open("wb"))
    _fill(stats)
    stats.close_events()
    assert "events_truncated_at" not in stats.as_dict()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(path.read_bytes())
    assert len(list(unpacker)) == 2 * FRAMES


@pytest.mark.broker
@pytest.mark.slow
def test_a_live_worker_on_a_full_disk_goes_on_and_the_run_says_so(tmp_path: Path) -> None:
    """Worker 0's event log on a tiny tmpfs (a symlink from the run directory); the rest on a
    disk with room, so the run can finish and say what happened."""
    from tests.conftest import require_mosquitto

    require_mosquitto()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    demo = Path(__file__).resolve().parent.parent / "scenarios" / "demo.yaml"
    with tiny_disk(tmp_path / "disk", "32k") as disk:  # a few seconds of worker 0's events
        (run_dir / "events-w0.msgpack").symlink_to(disk / "events-w0.msgpack")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["run", str(demo), "--duration", "20", "--speed", "4", "--workers", "2",
                         "--out", str(run_dir), "--quiet", "--fidelity-budget", "60000"])
        kept_b = (disk / "events-w0.msgpack").stat().st_size
        summary = json.loads((run_dir / "summary.json").read_text())
        stats = json.loads((run_dir / "stats-w0.json").read_text())
        info = trace_info(run_dir)
    assert code == 0, err.getvalue()
    assert summary["conservation_ok"], summary["conservation"]
    assert stats["events_truncated_at"]["bytes"] == kept_b > 0
    (note,) = summary["run"]["write_errors"]
    assert note.startswith(f"worker 0: event log cut at byte {kept_b}: No space left")
    log = (run_dir / "worker-w0.log").read_text()
    assert log.count("No space left on device") == 1 and "Traceback" not in log
    assert [d["problem"].startswith(FULL_DISK) for d in info["damage"]] == [True]
    print(f"worker 0 kept {kept_b} bytes of events; {info['damage'][0]['problem']}")
