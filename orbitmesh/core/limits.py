"""The bounds a scenario must keep so that `validate` and `run` can really do what it says.

Every figure here is documented in docs/scenarios.md ("Limits"), with the reason for it. The
field models in ``scenario`` use them as pydantic bounds; :func:`check_totals` adds the bounds
that span sections, and :func:`check_run` is the one check of the clock settings, shared by the
scenario file and the ``--speed`` / ``--duration`` overrides of ``orbitmesh run``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from orbitmesh.errors import ScenarioError

if TYPE_CHECKING:
    from orbitmesh.core.scenario import Scenario

# --- the file -------------------------------------------------------------------------------
MAX_FILE_BYTES = 4 * 1024 * 1024
"""A scenario with the most stations and flows allowed, one per line, is about 2.5 MB."""
MAX_DEPTH = 32
"""YAML nesting: a scenario needs 5 levels; PyYAML recurses once per level."""
MAX_NODES = 400_000
"""YAML nodes once aliases are expanded (10,000 stations are about 130,000; PyYAML composes
about 30,000 nodes per second on a busy core, so this bounds a refusal to seconds)."""

# --- the clock ------------------------------------------------------------------------------
MIN_TICK_S, MAX_TICK_S = 0.01, 3600.0
MIN_SPEED, MAX_SPEED = 0.001, 1000.0
MAX_DURATION_S = 30 * 86_400.0
MIN_WALL_TICK_S = 0.01
"""A tick must last at least this long in wall time (tick_s / speed): the controller computes
and publishes each tick in a few milliseconds; shorter ticks would only spin it."""

# --- sizes ----------------------------------------------------------------------------------
MAX_SATELLITES = 50_000
MAX_STATIONS = 10_000
MAX_OPS_CENTRES = 1_000
MAX_CONSTELLATIONS = 100
MAX_FLOWS = 5_000
MAX_FAULTS = 5_000
MAX_ANTENNAS = 1_000
MAX_GSL = 1_000
MAX_PAYLOAD_BYTES = 65_536
"""The largest CCSDS space-packet data field (a 16-bit length field counting octets - 1)."""
MAX_RATE_BPS = 1e12
MAX_FRAME_RATE_HZ = 1e6
MAX_QUEUE_FRAMES = 10_000_000
MAX_RANGE_KM = 1e6
MAX_DELAY_MS = 1e6
MAX_SEED = 2**63 - 1
"""numpy's generators take non-negative seeds; the workers derive theirs as seed * k + worker."""


def check_run(duration_s: float, speed: float, tick_s: float) -> list[tuple[str, str]]:
    """Problems with a run's clock, as (field, expectation); empty when it can run."""
    problems: list[tuple[str, str]] = []
    for name, value, low, high, open_low in (
            ("duration_s", duration_s, 0.0, MAX_DURATION_S, True),
            ("speed", speed, MIN_SPEED, MAX_SPEED, False),
            ("tick_s", tick_s, MIN_TICK_S, MAX_TICK_S, False)):
        if not _number(value) or not math.isfinite(value):
            problems.append((name, f"expected a finite number, got {value!r}"))
        elif value < low or (open_low and value == low) or value > high:
            problems.append((name, f"expected {'>' if open_low else 'from'} {low:g}"
                                   f"{' and ≤' if open_low else ' to'} {high:g}, got {value:g}"))
    if not problems and tick_s / speed < MIN_WALL_TICK_S:
        problems.append(("speed", f"a tick of {tick_s:g} s at speed {speed:g} lasts "
                                  f"{tick_s / speed * 1000:.3g} ms of wall time; expected at "
                                  f"least {MIN_WALL_TICK_S * 1000:g} ms (lower the speed or "
                                  "raise tick_s)"))
    return problems


def run_clock(scenario: Scenario, duration_s: float | None = None,
              speed: float | None = None) -> tuple[float, float]:
    """(duration_s, speed) of a run: the overrides, checked as the scenario's own are, or its."""
    duration = scenario.duration_s if duration_s is None else duration_s
    pace = scenario.speed if speed is None else speed
    problems = check_run(duration, pace, scenario.tick_s)
    if problems:
        flags = {"duration_s": "--duration", "speed": "--speed", "tick_s": "tick_s"}
        raise ScenarioError("; ".join(f"{flags[k]}: {msg}" for k, msg in problems))
    return duration, pace


def check_totals(s: Scenario) -> list[tuple[tuple[str | int, ...], str]]:
    """Bounds across sections: total satellites, stations, antennas, and the clock."""
    problems: list[tuple[tuple[str | int, ...], str]] = [
        ((field,), msg) for field, msg in check_run(s.duration_s, s.speed, s.tick_s)]
    walker_total = sum(c.walker.satellites for c in s.constellations if c.walker is not None)
    if walker_total > MAX_SATELLITES:
        problems.append((("constellations",), f"{walker_total:,} Walker satellites in all; "
                                              f"expected at most {MAX_SATELLITES:,}"))
    for section, items, most in (("constellations", s.constellations, MAX_CONSTELLATIONS),
                                 ("stations", s.stations, MAX_STATIONS),
                                 ("ops_centres", s.ops_centres, MAX_OPS_CENTRES),
                                 ("traffic", s.traffic, MAX_FLOWS),
                                 ("faults", s.faults, MAX_FAULTS)):
        if len(items) > most:
            problems.append(((section,), f"{len(items):,} items; expected at most {most:,}"))
    for i, g in enumerate(s.stations):
        if g.antennas != "all" and g.antennas > MAX_ANTENNAS:
            problems.append((("stations", i, "antennas"),
                             f"expected at most {MAX_ANTENNAS:,}, got {g.antennas}"))
    return problems


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
