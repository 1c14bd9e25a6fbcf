"""Seeded scenario fuzzer: mutated shipped scenarios either load or raise ScenarioError.

Each case mutates one of scenarios/*.yaml or tests/data/**/*.yaml (byte flips, deletions, values
swapped for huge/negative/NaN/strings, nested alias blocks, deep nesting, recursive aliases, bad
bytes) and loads it in-process. Any other exception, a case slower than ``CASE_LIMIT_S`` or the
process growing past ``MEMORY_LIMIT_KB`` fails the test, naming the case and keeping the file.
``ORBITMESH_FUZZ_CASES`` sets the number of cases (``make fuzz`` runs thousands),
``ORBITMESH_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from io import StringIO
from pathlib import Path
from types import FrameType

from orbitmesh.core.scenario import load_scenario
from orbitmesh.errors import ScenarioError
from orbitmesh.run.cli import main

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted([*(ROOT / "scenarios").glob("*.yaml"), *(ROOT / "tests" / "data").rglob("*.yaml")])
CASES = int(os.environ.get("ORBITMESH_FUZZ_CASES", "300"))
SEED = int(os.environ.get("ORBITMESH_FUZZ_SEED", "16"))
CASE_LIMIT_S = 5.0
"""Generous for a busy 2-core machine: a refused file takes milliseconds, the largest shipped
scenario about 0.1 s."""
MEMORY_LIMIT_KB = 1024 * 1024
"""Growth of the process's peak resident size over the whole run."""

VALUES = [".inf", "-.inf", ".nan", "-1", "0", "-0.0", "1e999", "1.0e+300", "-1.0e+300",
          "1" + "0" * 30, "1" + "0" * 5000, "9" * 19, "1000000000", "2026-13-45T99:00:00Z",
          '"x"', "''", "[]", "{}", "null", "true", "~", "*nowhere", "!!binary AAAA",
          "!!python/object/apply:os.system ['true']", "!!timestamp nope", "!!int x", "!!set {a}",
          '"\\x00"', "{[1]: 2}", "? [a, b]\n  : c", "&r [*r]", "'" + "x" * 100_000 + "'"]


def laughs(rng: random.Random) -> tuple[str, str]:
    """A block of nested anchors (billion-laughs shape) and an alias to its top."""
    width, levels = rng.randint(2, 12), rng.randint(2, 10)
    lines = ['x_a0: &a0 ["lol", 1, 2.5]']
    for i in range(1, levels):
        lines.append(f"x_a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n", f"*a{levels - 1}"


def nesting(rng: random.Random) -> str:
    depth = rng.choice([10, 40, 200, 5000, 50_000])
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    return "{a: " * depth + "1" + "}" * depth


VALUE_RE = re.compile(rb"(?m)(:[ \t]+)([^\s#{\[][^\n#,}\]]*)")


def mutate(text: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One mutation of ``text`` and a description of it."""
    kind = rng.choice(["flip", "delete", "value", "value", "value", "laughs", "nest",
                       "duplicate", "bytes", "truncate"])
    if kind == "flip":
        out = bytearray(text)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out), kind
    if kind == "delete":
        a = rng.randrange(len(text))
        return text[:a] + text[a + rng.randint(1, 200):], f"{kind}@{a}"
    if kind == "truncate":
        return text[:rng.randrange(len(text))], kind
    if kind == "bytes":
        a = rng.randrange(len(text))
        bad = rng.choice([b"\xff\xfe", b"\xe9", b"\x00", b"\t", b"\x1b"])
        return text[:a] + bad + text[a:], kind
    if kind == "duplicate":
        lines = text.split(b"\n")
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines)), lines[i])
        return b"\n".join(lines), kind
    spots = list(VALUE_RE.finditer(text))
    if not spots:
        return text, "none"
    spot = rng.choice(spots)
    header = b""
    if kind == "laughs":
        block, value = laughs(rng)
        header = block.encode()
    elif kind == "nest":
        value = nesting(rng)
    else:
        value = rng.choice(VALUES)
    out = text[:spot.start(2)] + value.encode() + text[spot.end(2):]
    return header + out, f"{kind} {spot.group(2)[:30]!r} -> {value[:40]!r}"


class CaseTimeout(Exception):
    """A case ran past the hard limit (a hang, as in issue 16)."""


@contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the main thread after ``seconds`` (SIGALRM)."""
    def fire(signum: int, frame: FrameType | None) -> None:
        raise CaseTimeout(f"no answer after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _homes(tmp_path: Path) -> dict[Path, Path]:
    """A folder per seed folder in which its data files (not its scenarios) are linked, so that
    relative tle/omm paths resolve and nobody globbing scenarios/*.yaml meets a mutant."""
    homes: dict[Path, Path] = {}
    for i, folder in enumerate(sorted({p.parent for p in SEEDS})):
        home = homes[folder] = tmp_path / f"seeds-{i}"
        home.mkdir()
        for entry in folder.iterdir():
            if entry.suffix != ".yaml":
                (home / entry.name).symlink_to(entry)
    return homes


def run_cases(tmp_path: Path, n: int, seed: int,
              on_refused: Callable[[Path, ScenarioError], None] | None = None,
              load: Callable[[Path], object] = load_scenario) -> list[str]:
    """Run ``n`` cases; the failures, one line each."""
    rng = random.Random(seed)
    originals = [p.read_bytes() for p in SEEDS]
    homes = _homes(tmp_path)
    base_kb, failures = peak_kb(), []
    for case in range(n):
        k = rng.randrange(len(SEEDS))
        text, what = mutate(originals[k], rng)
        if rng.random() < 0.2:  # stack a second mutation now and then
            text, more = mutate(text, rng)
            what += " + " + more
        path = homes[SEEDS[k].parent] / f"case-{case}.yaml"
        path.write_bytes(text)
        label = f"case {case} ({SEEDS[k].relative_to(ROOT)}: {what})"
        started = time.perf_counter()
        try:
            with hard_limit(CASE_LIMIT_S * 4):
                load(path)
        except ScenarioError as exc:
            if on_refused is not None:
                on_refused(path, exc)
        except (Exception, CaseTimeout) as exc:  # anything but ScenarioError is the finding
            keep = tmp_path / f"case-{case}.yaml"
            keep.write_bytes(text)
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]} (file: {keep})")
        finally:
            path.unlink()
        elapsed_s = time.perf_counter() - started
        if elapsed_s > CASE_LIMIT_S:
            failures.append(f"{label}: took {elapsed_s:.1f} s")
        if peak_kb() - base_kb > MEMORY_LIMIT_KB:
            failures.append(f"{label}: peak memory grew by {(peak_kb() - base_kb) // 1024} MB")
            break
    return failures


def test_mutated_scenarios_load_or_raise_scenario_error(tmp_path: Path) -> None:
    failures = run_cases(tmp_path, CASES, SEED)
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:20])


def test_the_fuzzer_finds_a_planted_crash(tmp_path: Path) -> None:
    # Guards the harness: a loader that crashes on some input must show up as failures.
    def fragile(path: Path) -> object:
        if len(path.read_bytes()) % 7 == 0:  # about one case in seven
            raise ZeroDivisionError("planted")
        return load_scenario(path)

    failures = run_cases(tmp_path, 60, SEED, load=fragile)
    assert any("ZeroDivisionError: planted" in f for f in failures)


def test_validate_refuses_mutants_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    refused: list[tuple[bytes, ScenarioError]] = []

    def keep(path: Path, exc: ScenarioError) -> None:
        if len(refused) < 12:
            refused.append((path.read_bytes(), exc))

    run_cases(tmp_path, 40, SEED + 1, keep)
    assert len(refused) >= 5
    for i, (text, exc) in enumerate(refused):
        path = tmp_path / f"refused-{i}.yaml"
        path.write_bytes(text)
        err = StringIO()
        with redirect_stderr(err):
            code = main(["validate", str(path)])
        lines = err.getvalue().splitlines()
        assert code == 2, err.getvalue()
        assert "Traceback" not in err.getvalue()
        assert lines[0].startswith("error: ")
        # The message alone, or a headline and one line per problem, each naming this file.
        assert len(lines) == len(str(exc).splitlines()), err.getvalue()
        assert all(line.startswith(str(path)) for line in lines[1:])
