"""The one run clock: how every process of a run maps wall time to scenario time.

Scenario time is ``(wall - t0_wall) * speed``. An emulated delay of ``d`` scenario seconds lasts
``d / speed`` wall seconds. Names say which clock a number is on: ``*_wall`` (seconds since the
Unix epoch, shared by every process of the run) and ``*_s`` (scenario seconds since the run's
start). Nothing else in the project converts between the two.

The clock's source is injected: :class:`WallClock` reads ``time.time()``; tests pass a
:class:`FakeWallClock` that they move by hand.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

Wall = TypeVar("Wall", float, NDArray[np.float64])
"""A wall time, or an array of them: the clock converts both alike."""


class WallSource(Protocol):
    """Where wall time comes from."""

    def now_wall(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class WallClock:
    """The real wall clock."""

    def now_wall(self) -> float:
        """``time.time()``."""
        return time.time()


class FakeWallClock:
    """A wall clock that moves only when told (tests)."""

    def __init__(self, start_wall: float = 1_000_000.0) -> None:
        self.wall = start_wall

    def now_wall(self) -> float:
        """The time the test set."""
        return self.wall

    def advance(self, wall_s: float) -> None:
        """Move the clock forward by ``wall_s`` seconds."""
        self.wall += wall_s


@dataclass(frozen=True, slots=True)
class RunClock:
    """Scenario time 0 is at wall time ``t0_wall``; scenario time runs ``speed`` times wall time."""

    t0_wall: float
    speed: float

    def scenario_s(self, wall: Wall) -> Wall:
        """Scenario seconds at wall time ``wall`` (or at each of an array of them)."""
        return (wall - self.t0_wall) * self.speed

    def wall_at(self, t_s: float) -> float:
        """Wall time at which scenario time ``t_s`` happens."""
        return self.t0_wall + t_s / self.speed

    def wall_delay(self, delay_s: float) -> float:
        """Wall seconds that a delay of ``delay_s`` scenario seconds lasts."""
        return delay_s / self.speed

    def scenario_delay(self, wall_s: float) -> float:
        """Scenario seconds that ``wall_s`` wall seconds amount to."""
        return wall_s * self.speed

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> RunClock:
        """The clock a run recorded (its manifest, summary ``run`` block or clock message)."""
        return cls(float(record.get("t0_wall") or 0.0), float(record["speed"]))
