"""The numpy-built JSON pass rows are the row loop's text, byte for byte (edge values included)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from orbitmesh.core._pass_text import json_text
from orbitmesh.core.pass_table import PassTable

REF = datetime(2026, 1, 1, tzinfo=UTC)


def _table(elevation_deg: np.ndarray, *, times_s: np.ndarray | None = None,
           seed: int = 0) -> PassTable:
    rng = np.random.default_rng(seed)
    n = len(elevation_deg)
    aos = rng.uniform(-3600.0, 3 * 86400.0, n) if times_s is None else times_s
    stations = ("new-york", "ab", 'quote"d', "x" * 31)
    satellites = (*(f"starlink-{i}" for i in range(1, 12)), "s")
    return PassTable(REF, stations, satellites, rng.integers(0, len(stations), n),
                     rng.integers(0, len(satellites), n), aos, aos + rng.uniform(0, 300, n),
                     aos + rng.uniform(300, 600, n), elevation_deg, np.full(n, 900.0),
                     np.full(n, 2000.0))


def _edge_elevations(rng: np.random.Generator) -> np.ndarray:
    """Values whose repr after rounding to 3 decimals is easy to get wrong."""
    base = [0.0, -0.0, 0.0004, -0.0004, 0.0005, 0.0015, 25.0, 25.1, 25.10049, 25.1005, 89.9996,
            90.0, 9.9995, 10.0, 99.9995, 0.001, -0.001, -25.125, 999_999.4, 123_456.789,
            1e-9, 2.675, 1.0005, 33.4565, 33.4575]
    ulp_steps = np.nextafter(np.repeat(np.array(base), 2),
                             np.tile([np.inf, -np.inf], len(base)))
    halves = (rng.integers(0, 90_000, 2000) + 0.5) / 1000.0  # ties at the rounding digit
    return np.concatenate([base, ulp_steps, halves, rng.uniform(-90, 90, 5000),
                           rng.uniform(0, 90, 5000).round(3), rng.uniform(0, 90, 2000).round(1)])


def test_json_text_is_the_row_loop_byte_for_byte() -> None:
    """Joined rows from numpy equal the f-string rows for edge and random values."""
    rng = np.random.default_rng(14)
    table = _table(_edge_elevations(rng))
    for sep in (",\n  ", "", "\n"):
        assert table.json_text(sep) == sep.join(table.json_rows())


def test_values_outside_the_digit_rule_fall_back_to_the_row_loop() -> None:
    """NaN, infinities and a million degrees are not the fast path's: same text anyway."""
    for odd in (np.nan, np.inf, -np.inf, 1e6, -2e7, 1e300):
        table = _table(np.array([25.5, odd, 30.0]))
        stamps = [np.zeros((3, 23), np.uint8)] * 3
        assert json_text(table.station_ids, table.satellite_ids, table.station,
                         table.satellite, stamps, table.max_elevation_deg, ",") is None
        assert table.json_text() == ",\n  ".join(table.json_rows())


@pytest.mark.parametrize("offset_s", [-62_000_000_000.0, 300_000_000_000.0])
def test_years_beyond_four_digits_fall_back(offset_s: float) -> None:
    """Times whose ISO form is not 23 characters take the row loop (same text)."""
    table = _table(np.array([30.0, 40.0]), times_s=np.array([0.0, offset_s]))
    assert table.json_text() == ",\n  ".join(table.json_rows())


def test_empty_table_has_no_text() -> None:
    """No passes, no rows."""
    assert _table(np.zeros(0)).json_text() == ""
