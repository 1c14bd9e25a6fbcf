"""Damaged traces are reported, not read silently; result files survive a full disk.

Hand-made traces (the documented record format, with a finished worker's stats file) are
corrupted, truncated at every offset and salted with wrong-shaped records; every damage must be
named with its file and the byte offset computed here independently (from the packed lengths).
One real run checks the same on a real trace; a tiny tmpfs (root only) checks the full disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from orbitmesh.core.scenario import load_scenario
from orbitmesh.run.cli import main
from orbitmesh.run.export import export_csv
from orbitmesh.run.files import DiskError, atomic_write
from orbitmesh.run.records import TraceError
from orbitmesh.run.report import fault_impact
from orbitmesh.run.trace import iter_events, read_link_timeline
from orbitmesh.run.trace_info import trace_info

ROOT = Path(__file__).resolve().parent.parent
PASS = ROOT / "tests" / "data" / "live" / "pass.yaml"
DEMO = ROOT / "scenarios" / "demo.yaml"

GOOD = [["offer", 1000.50, 1, 0, 0, 0, 2, 500], ["hop", 1000.52, 1, 0, 0, 1, 500],
        ["offer", 1000.53, 2, 0, 0, 0, 2, 40], ["hop", 1000.55, 1, 0, 1, 2, 500],
        ["deliver", 1000.56, 1, 0, 2, 2, 120.0], ["drop", 1000.60, 2, 0, 0, "queue", None],
        ["offer", 1000.61, 3, 0, 0, 0, 2, 40], ["deliver", 1000.70, 3, 0, 2, 1, 90.0]]
COUNTED = {"offer": 3, "deliver": 2, "drop": 1}


def _packed(records: list[Any]) -> list[bytes]:
    return [msgpack.packb(r) for r in records]


def _offsets(records: list[Any]) -> list[int]:
    """Byte offset of each record in the concatenated stream."""
    out, at = [], 0
    for body in _packed(records):
        out.append(at)
        at += len(body)
    return out


def _trace(run_dir: Path, body: bytes | None = None, *, final: bool = True,
           links: list[dict[str, Any]] | None = None) -> Path:
    """A finished trace with one stream (``body``; default GOOD) and its worker's final stats."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "orbitmesh-trace", "version": "1.0", "run_id": "hand", "scenario": "x",
                "epoch": "2026-01-01T00:00:00Z", "speed": 2.0, "duration_s": 3.0,
                "tick_s": 1.0, "seed": 1, "t0_wall": 1000.0,
                "node_ids": ["tokyo", "sat-a", "brussels"],
                "flows": [{"index": 0, "name": "tokyo-brussels", "source": "tokyo",
                           "destination": "brussels", "policy": None}],
                "builtin_flows": {"-1": "telemetry", "-2": "telecommands", "-3": "acks"},
                "faults": [], "complete": True, "interrupted": False}
    (run_dir / "trace.json").write_text(json.dumps(manifest))
    (run_dir / "events-w0.msgpack").write_bytes(b"".join(_packed(GOOD)) if body is None else body)
    stats = {"worker": 0, "final": final, "flows": {"0": {
        "offered": COUNTED["offer"], "delivered": COUNTED["deliver"],
        "dropped": {"queue": COUNTED["drop"]}, "suppressed": {}}}}
    (run_dir / "stats-w0.json").write_text(json.dumps(stats))
    links = links if links is not None else LINKS
    (run_dir / "links.msgpack").write_bytes(b"".join(_packed(links)))
    return run_dir


LINKS = [{"t_s": float(t), "up": [["tokyo", "sat-a", 1, 0.004]] if t == 0 else [],
          "changed": [["tokyo", "sat-a", 1, 0.004 + t / 1000]] if t else [],
          "down": [], "handovers": 0, "route_changes": 0} for t in range(4)]


def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


# -- corrupt bytes mid-file ---------------------------------------------------------------------

def test_corrupt_record_is_reported_with_file_and_offset(tmp_path: Path) -> None:
    body = bytearray(b"".join(_packed(GOOD)))
    at = _offsets(GOOD)[3]
    body[at] = 0xC1  # the one byte msgpack never uses
    trace = _trace(tmp_path / "run", bytes(body))
    info = trace_info(trace)
    [damage] = info["damage"]
    assert (Path(damage["file"]).name, damage["offset"], damage["records_before"]) == (
        "events-w0.msgpack", at, 3)
    assert sum(info["events"].values()) == 3, "the counts stop at the damage"
    code, err = _cli("trace", "info", str(trace))
    assert code == 2 and f"events-w0.msgpack: byte {at}" in err

    salvaged = trace_info(trace, salvage=True)
    assert sum(salvaged["events"].values()) == len(GOOD) - 1
    assert salvaged["damage"][0]["skipped_b"] == len(_packed(GOOD)[3])
    assert salvaged["streams"][0]["missing_events"] == 0, "only a hop was lost: not counted"
    assert _cli("trace", "info", str(trace), "--salvage")[0] == 0
    with pytest.raises(TraceError, match=f"byte {at}"):
        list(iter_events(trace))


def test_export_refuses_a_damaged_trace_and_leaves_no_partial_file(tmp_path: Path) -> None:
    body = bytearray(b"".join(_packed(GOOD)))
    body[_offsets(GOOD)[5]] = 0xC1
    trace = _trace(tmp_path / "run", bytes(body))
    out = tmp_path / "events.csv"
    code, err = _cli("trace", "export", str(trace), "--format", "csv", "--out", str(out))
    assert code == 2 and not out.exists() and f"byte {_offsets(GOOD)[5]}" in err
    assert not list(tmp_path.glob(".*.tmp"))
    code, err = _cli("trace", "export", str(trace), "--format", "csv", "--out", str(out),
                     "--salvage")
    assert code == 0 and "salvaged" in err
    assert len(out.read_text().splitlines()) == 1 + len(GOOD) - 1
    # The drop was lost: the worker counted it, so the stream says one counted event is missing.
    assert trace_info(trace, salvage=True)["streams"][0]["missing_events"] == 1


# -- truncation ---------------------------------------------------------------------------------

def test_truncation_at_every_offset_is_damage_of_a_finished_stream(tmp_path: Path) -> None:
    whole = b"".join(_packed(GOOD))
    offsets = _offsets(GOOD)
    for cut in range(len(whole)):
        trace = _trace(tmp_path / f"cut{cut}", whole[:cut])
        info = trace_info(trace)
        assert info["damage"], f"a cut at byte {cut} of {len(whole)} went unnoticed"
        damage = info["damage"][0]
        # At a record boundary the damage is the cut itself (fewer records than the worker
        # counted); inside a record it is the start of the record the cut went through.
        start = cut if cut in offsets else max(o for o in offsets if o < cut)
        assert (damage["offset"], damage["records_before"]) == (start, offsets.index(start)), cut
        shutil.rmtree(trace)
    assert not trace_info(_trace(tmp_path / "whole", whole))["damage"]


def test_a_stream_still_being_written_may_end_mid_record(tmp_path: Path) -> None:
    whole = b"".join(_packed(GOOD))
    cut = _offsets(GOOD)[4] + 3
    trace = _trace(tmp_path / "run", whole[:cut], final=False)
    info = trace_info(trace)
    assert not info["damage"]
    assert info["streams"][0]["partial_tail_at"] == _offsets(GOOD)[4]
    assert sum(info["events"].values()) == 4


# -- wrong-shaped records -----------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "says"), [
    ({"t_s": 1.0}, "expected an event array, got dict"),
    (7, "expected an event array, got int"),
    (["teleport", 1000.5, 9, 0], "unknown event tag 'teleport'"),
    (["hop", "late", 9, 0, 0, 1, 40], "hop field wall is str"),
    (["offer", 1000.5, 9, 0], "offer record with 4 fields"),
    (["drop", 1000.5, 9, 0, 0, 17, None], "drop field reason is int"),
])
def test_wrong_shaped_record_is_damage(tmp_path: Path, bad: Any, says: str) -> None:
    records = [*GOOD[:2], bad, *GOOD[2:]]
    trace = _trace(tmp_path / "run", b"".join(_packed(records)))
    [damage] = trace_info(trace)["damage"]
    assert damage["offset"] == _offsets(records)[2] and says in damage["problem"]
    salvaged = trace_info(trace, salvage=True)
    assert sum(salvaged["events"].values()) == len(GOOD)
    assert salvaged["damage"][0]["skipped_b"] == len(msgpack.packb(bad))


# -- link timeline ------------------------------------------------------------------------------

def test_truncated_link_timeline_refuses_replay(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "run")
    whole = (trace / "links.msgpack").read_bytes()
    at = _offsets(LINKS)[2]
    (trace / "links.msgpack").write_bytes(whole[:at + 5])
    code, err = _cli("replay", str(trace), "--scenario", str(PASS), "--links-from", str(trace))
    assert code == 2 and f"links.msgpack: byte {at}" in err and "--salvage" in err
    records, warnings = read_link_timeline(trace, salvage=True)
    assert len(records) == 2 and "stops at t=1 s" in warnings[0]


def test_link_timeline_cut_at_a_record_boundary_is_short(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "run", links=LINKS[:2])  # the run lasted 3 s, the timeline 1 s
    with pytest.raises(TraceError, match="ends at t=1 s but the run lasted 3 s"):
        read_link_timeline(trace)
    assert len(read_link_timeline(trace, salvage=True)[0]) == 2
    assert read_link_timeline(_trace(tmp_path / "ok"))[1] == []


def test_wrong_shaped_link_record_is_damage(tmp_path: Path) -> None:
    bad = {**LINKS[1], "up": [["tokyo", 3, 1, 0.1]]}
    trace = _trace(tmp_path / "run", links=[LINKS[0], bad, *LINKS[2:]])
    with pytest.raises(TraceError, match=f"byte {_offsets(LINKS)[1]}: record of the wrong shape"):
        read_link_timeline(trace)


# -- the report ---------------------------------------------------------------------------------

def test_fault_impact_records_damage_instead_of_crashing(tmp_path: Path) -> None:
    body = bytearray(b"".join(_packed(GOOD)))
    body[_offsets(GOOD)[4]] = 0xC1
    trace = _trace(tmp_path / "run", bytes(body))
    damage: list[Any] = []
    fault = {"id": "f1", "kind": "link_down", "start_s": 0.0, "end_s": None, "origin": "live"}
    impact = fault_impact(trace, load_scenario(PASS), [fault], [], {
        "t0_wall": 1000.0, "speed": 2.0, "duration_s": 3.0}, [], damage)
    assert len(impact) == 1
    assert [d.offset for d in damage] == [_offsets(GOOD)[4]]


# -- result files and a full disk ---------------------------------------------------------------

@contextlib.contextmanager
def _tiny_disk(where: Path, size: str = "200k") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path: Path) -> None:
    with _tiny_disk(tmp_path / "disk") as disk:
        target = atomic_write(disk / "summary.json", "old")
        with pytest.raises(DiskError, match=f"disk full writing {target}"):
            atomic_write(target, b"x" * 400_000)
        assert target.read_text() == "old"
        assert sorted(p.name for p in disk.iterdir()) == ["summary.json"], "no temporary left"



def test_atomic_writes_of_one_file_from_two_threads_never_collide(tmp_path: Path) -> None:
    """A worker snapshots its stats on a thread while its loop writes the final copy."""
    target = tmp_path / "stats-w0.json"
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(300):
                atomic_write(target, text, durable=False)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(str(k) * 2000,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in ("0" * 2000, "1" * 2000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats-w0.json"], "no temporary left"

# -- a real trace -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "run"
    code, err = _cli("run", str(PASS), "--duration", "5", "--speed", "5", "--out", str(out),
                     "--quiet")
    assert code == 0, err
    return out


@pytest.mark.slow
@pytest.mark.broker
def test_real_trace_damage(real_trace: Path, tmp_path: Path) -> None:
    assert not trace_info(real_trace)["damage"]
    assert _cli("trace", "info", str(real_trace))[0] == 0
    copy = Path(shutil.copytree(real_trace, tmp_path / "copy"))
    events = copy / "events-w0.msgpack"
    body = bytearray(events.read_bytes())
    middle = len(body) // 2
    body[middle:middle + 8] = b"\xc1" * 8
    events.write_bytes(bytes(body))
    info = trace_info(copy)
    [damage] = info["damage"]
    assert damage["offset"] <= middle < damage["offset"] + 64
    total = sum(trace_info(real_trace)["events"].values())
    salvaged = trace_info(copy, salvage=True)
    got = sum(salvaged["events"].values())
    assert total - 3 <= got < total, "salvage skips the damaged record(s) and no more"
    buf = io.StringIO()
    with pytest.raises(TraceError):
        export_csv(copy, buf)
    links = copy / "links.msgpack"
    links.write_bytes(links.read_bytes()[:-7])
    code, err = _cli("replay", str(real_trace), "--scenario", str(PASS), "--links-from",
                     str(copy))
    assert code == 2 and "links.msgpack: byte" in err


@pytest.mark.slow
@pytest.mark.broker
def test_full_disk_under_out_ends_the_run_with_one_line(tmp_path: Path) -> None:
    with _tiny_disk(tmp_path / "disk") as disk:
        out = io.StringIO()
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["run", str(DEMO), "--duration", "8", "--speed", "4", "--workers", "2",
                         "--out", str(disk / "run"), "--quiet"])
        assert code == 1
        lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "disk full writing" in lines[0], err.getvalue()
        assert "Traceback" not in err.getvalue()
        assert "conservation" in out.getvalue().lower(), "the summary table is still printed"
        assert not list((disk / "run").glob(".*.tmp")), "no temporary file left behind"
