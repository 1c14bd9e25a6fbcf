"""`orbitmesh contacts` for passes: output that streams as the search goes, the same bytes from
forked workers as from one process, the streamed table, and progress only on a terminal."""

from __future__ import annotations

import argparse
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orbitmesh.core.geometry import Propagator, Stations
from orbitmesh.core.pass_table import format_table
from orbitmesh.core.passes import find_passes

DEMO = Path(__file__).resolve().parents[1] / "scenarios" / "demo.yaml"


class _Recorder(io.StringIO):
    """An output stream that remembers what had been written at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def _contacts_args(fmt: str, hours: float) -> argparse.Namespace:
    from orbitmesh.run.cli import _parser

    end = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours)
    return _parser().parse_args(["contacts", str(DEMO), "--format", fmt, "--end",
                                 end.strftime("%Y-%m-%dT%H:%M:%SZ")])


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_cli_streams_passes_as_chunks_close(fmt: str) -> None:
    """Rows reach the stream chunk by chunk, long before the search ends, and every row once."""
    from orbitmesh.run.cli import _load
    from orbitmesh.run.contacts_cli import write_passes

    topology = _load(str(DEMO))
    out = _Recorder()
    seen: list[int] = []
    count = write_passes(topology, _contacts_args(fmt, 12.0), out, workers=0,
                         on_rows=seen.append)
    assert count > 100
    assert len(out.flushed) > 5  # one flush per chunk that closed passes
    assert seen == sorted(seen) and seen[-1] == count
    assert 0 < seen[0] < count // 3  # the first rows were out before two thirds of the search
    first = out.flushed[0]
    assert first.count("\n") < out.getvalue().count("\n") // 3
    assert out.getvalue().startswith(first)  # written once, then only appended to
    if fmt == "json":
        rows = json.loads(out.getvalue())
        assert len(rows) == count
    else:
        lines = out.getvalue().splitlines()
        assert len(lines) == count + 2
        assert lines[0].split()[:2] == ["station", "satellite"]
        assert set(lines[1]) == {"-", " "}


def test_cli_workers_give_the_same_bytes_as_one_process() -> None:
    """Chunks scanned in forked workers: same output, byte for byte, as scanning them here."""
    from orbitmesh.run.cli import _load
    from orbitmesh.run.contacts_cli import write_passes
    from orbitmesh.run.pass_workers import forking_available

    if not forking_available():
        pytest.skip("no fork on this platform: contacts scans in its own process")
    topology = _load(str(DEMO))
    here, forked = io.StringIO(), io.StringIO()
    args = _contacts_args("json", 8.0)
    n_here = write_passes(topology, args, here, workers=0)
    n_forked = write_passes(topology, args, forked, workers=2)
    assert n_here == n_forked > 50
    assert forked.getvalue() == here.getvalue()


def test_cli_table_rows_match_the_pass_table() -> None:
    """The streamed table has format_table's rows (columns sized from all ids, not the rows)."""
    from orbitmesh.run.cli import _load
    from orbitmesh.run.contacts_cli import write_passes

    topology = _load(str(DEMO))
    out = io.StringIO()
    write_passes(topology, _contacts_args("table", 6.0), out, workers=0)
    st = topology.scenario.stations
    n_sats = topology.n_satellites
    passes = find_passes(Propagator(list(topology.satrecs[:n_sats])),
                         list(topology.node_ids[:n_sats]),
                         Stations.from_geodetic([g.lat_deg for g in st], [g.lon_deg for g in st],
                                                [g.alt_m / 1000.0 for g in st]),
                         [g.name for g in st], [g.min_elevation_deg for g in st],
                         topology.scenario.epoch, topology.scenario.epoch + timedelta(hours=6))
    streamed = [line.split() for line in out.getvalue().splitlines()[2:]]
    expected = [line.split() for line in format_table(passes).splitlines()[2:]]
    assert len(streamed) == len(expected) == len(passes) > 20
    assert streamed == expected


def test_progress_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """No progress bar in pipes and logs; on a terminal, one on standard error."""
    from orbitmesh.run import contacts_cli

    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for tty in (False, True):
        err = Stream(tty)
        monkeypatch.setattr(sys, "stderr", err)
        with contacts_cli._progress("searching passes", 4) as report:
            for i in range(4):
                report(i + 1)
        assert ("searching passes" in err.getvalue()) == tty



def test_cli_sgp4_step_interpolates_and_bad_values_exit_2(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """--sgp4-step 60: the same passes, times within a few ms; 45 s or a plan format: exit 2."""
    from orbitmesh.run.cli import _load, main
    from orbitmesh.run.contacts_cli import write_passes

    topology = _load(str(DEMO))
    args = _contacts_args("json", 8.0)
    exact, fast = io.StringIO(), io.StringIO()
    write_passes(topology, args, exact, workers=0)
    args.sgp4_step = 60.0
    write_passes(topology, args, fast, workers=0)
    a, b = json.loads(exact.getvalue()), json.loads(fast.getvalue())
    assert len(a) == len(b) > 50
    assert [(r["station"], r["satellite"]) for r in a] == [(r["station"], r["satellite"])
                                                            for r in b]

    def stamp(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    worst_s = max(abs(stamp(x[k]) - stamp(y[k])) for x, y in zip(a, b, strict=True)
                  for k in ("aos", "tca", "los"))
    assert worst_s < 0.05
    for extra in (["--format", "json", "--sgp4-step", "45"],
                  ["--format", "json", "--sgp4-step", "120"],
                  ["--format", "ion", "--sgp4-step", "60"]):
        assert main(["contacts", str(DEMO), "--end", "2026-01-01T01:00:00Z", *extra]) == 2
        assert "--sgp4-step" in capsys.readouterr().err


def test_refused_options_leave_the_output_file_as_it_was(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """Bad input loses nothing: no empty -o file, and an earlier one keeps its bytes."""
    from orbitmesh.run.cli import main

    fresh, earlier = tmp_path / "fresh.json", tmp_path / "earlier.json"
    earlier.write_text("earlier passes\n")
    for out in (fresh, earlier):
        assert main(["contacts", str(DEMO), "--end", "2026-01-01T01:00:00Z", "--format",
                     "json", "--sgp4-step", "45", "-o", str(out)]) == 2
    assert "--sgp4-step" in capsys.readouterr().err
    assert not fresh.exists()
    assert earlier.read_text() == "earlier passes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.json"], "no temporary left"
    assert main(["contacts", str(DEMO), "--end", "2026-01-01T01:00:00Z", "--format", "json",
                 "-o", str(fresh)]) == 0
    assert json.loads(fresh.read_text())


def test_pass_kernel_loads_without_scipy_linalg() -> None:
    """A pass worker's numba start skips numba's scipy.linalg probe; np.dot kernels still work."""
    import subprocess

    code = ("import sys\n"
            "from orbitmesh.core.passes import load_kernel\n"
            "load_kernel()\n"
            "assert 'scipy.linalg' not in sys.modules, 'scipy.linalg imported'\n"
            "import numba, numpy as np\n"
            "dot = numba.njit(lambda a, b: np.dot(a, b))\n"
            "assert dot(np.ones(3), np.ones(3)) == 3.0\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
