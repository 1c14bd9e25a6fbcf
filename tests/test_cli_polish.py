"""CLI consistency: every option has help, -o means --out everywhere, tables never print
scientific notation, pass tables carry dates, progress only on a terminal."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orbitmesh.core.pass_table import Pass, format_table
from orbitmesh.run.cli import _parser, main
from orbitmesh.run.report import _fmt

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scenarios" / "demo.yaml"


def _commands(parser: argparse.ArgumentParser, prefix: str = "orbitmesh"
              ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}")


def test_every_option_has_help() -> None:
    missing = [f"{cmd} {'/'.join(a.option_strings)}"
               for cmd, p in _commands(_parser()) for a in p._actions
               if a.option_strings and a.help in (None, "") and a.dest != "help"]
    assert missing == []


def test_the_walk_sees_every_command() -> None:
    names = {cmd for cmd, _ in _commands(_parser())}
    assert {"orbitmesh report", "orbitmesh export-geometry", "orbitmesh trace export",
            "orbitmesh image list", "orbitmesh validate"} <= names


def test_out_and_o_mean_the_same() -> None:
    for cmd, p in _commands(_parser()):
        for a in p._actions:
            if "--out" in a.option_strings or "-o" in a.option_strings:
                assert {"-o", "--out"} <= set(a.option_strings), (cmd, a.option_strings)


@pytest.mark.parametrize("value", [11760.0, 1.176e4, 123456789.0, 0.00001234, 999.96, 65.54,
                                   -12345.6, 0.5])
def test_numbers_are_never_scientific(value: float) -> None:
    text = _fmt(value)
    assert not re.search(r"[eE][+-]?\d", text), text
    assert float(text) == pytest.approx(value, rel=1e-3, abs=1e-6)


def test_pass_table_carries_dates() -> None:
    aos = datetime(2026, 1, 1, 23, 55, tzinfo=UTC)
    p = Pass("svalbard", "sat-1", aos, aos + timedelta(minutes=4), aos + timedelta(minutes=8),
             45.0, 900.0, 2000.0)
    line = format_table([p]).splitlines()[2]
    # The pass crosses midnight: TCA and LOS are on the next day, and the table says so.
    assert "2026-01-01 23:55:00" in line
    assert "2026-01-01 23:59:00" in line
    assert "2026-01-02 00:03:00" in line


def test_validate_json(tmp_path: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["validate", str(DEMO), "--format", "json"]) == 0
    body = json.loads(out.getvalue())
    assert body["ok"] is True and body["satellites"] == 64 and body["stations"] == 5
    assert body["traffic"][0]["name"] == "tokyo-brussels"
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO.read_text().replace("tick_s: 1.0", "tick_s: nope"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["validate", str(bad), "--format", "json"]) == 2
    body = json.loads(out.getvalue())
    assert body["ok"] is False and "tick_s" in body["error"]


def test_progress_is_silent_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    # Under pytest stderr is not a terminal: a long `path` prints its rows and nothing else.
    assert main(["path", str(DEMO), "tokyo", "brussels", "--start", "2026-01-01T00:00:00Z",
                 "--end", "2026-01-01T00:03:00Z", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert len(json.loads(captured.out)) == 4


def test_trace_info_takes_a_bare_run_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_run_report import hand_trace

    hand_trace(tmp_path / "runs" / "hand-3")
    monkeypatch.chdir(tmp_path)
    assert main(["trace", "info", "hand-3", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == "hand"
    assert main(["trace", "info", "no-such-run"]) == 2
