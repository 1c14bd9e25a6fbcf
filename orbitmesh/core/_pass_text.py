"""Pass rows as JSON text built with numpy: every row's bytes at once, not one f-string a row.

A JSON row of :meth:`orbitmesh.core.pass_table.PassTable.json_rows` is a few pieces: the
station's and the satellite's quoted names (one of a few thousand, looked up), three timestamps
of fixed width, and the maximum elevation as Python's ``repr`` of the value rounded to 3
decimals. Each piece becomes a byte matrix, one row per pass, padded with NUL bytes to its
widest value; the matrices side by side, read row by row with the NULs dropped, are the text
(no row holds a NUL: ``json.dumps`` escapes it). The text is the same, byte for byte, as the
row loop's; values the digit rule below does not cover (NaN, infinities, magnitudes of a million
degrees or more) make :func:`json_text` return None and the caller uses the row loop.

Why the digits are ``repr``'s: ``np.round(x, 3)`` is the double nearest ``k / 1000`` for the
integer ``k = rint(1000 x)``, and the shortest decimal that reads back as that double is ``k /
1000`` itself (any other decimal of at most as many digits is at least 0.001 away, far more than
half a unit in the last place below a million), written with trailing zeros cut but one kept.

Array axes: ``(P,)`` passes; byte matrices ``(P, width)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

ByteMatrix = NDArray[np.uint8]
IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
_MAX_INT_DIGITS = 6  # elevations below a million degrees; others take the row loop


def _constant(text: str, n: int) -> ByteMatrix:
    raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.broadcast_to(raw, (n, len(raw)))


@lru_cache(maxsize=8)
def _name_table(texts: tuple[str, ...], right: bool) -> ByteMatrix:
    """``texts`` as rows of a NUL-padded byte matrix (on the left if ``right``); a search's
    ids are the same for every chunk, so this is built once."""
    encoded = [t.encode("ascii") for t in texts]
    width = max([1, *map(len, encoded)])
    table = np.zeros((len(encoded), width), dtype=np.uint8)
    for i, raw in enumerate(encoded):
        table[i, width - len(raw) if right else 0:][:len(raw)] = np.frombuffer(raw, np.uint8)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=8)
def _json_names(ids: tuple[str, ...], before: str, after: str) -> tuple[str, ...]:
    return tuple(before + json.dumps(i) + after for i in ids)


def _digits(value: IntArray, count: int) -> ByteMatrix:
    """``value`` (non-negative) as ``count`` decimal digits, zero-padded, one row each."""
    out = np.empty((len(value), count), dtype=np.uint8)
    for k in range(count):
        out[:, count - 1 - k] = ord("0") + (value // 10 ** k) % 10
    return out


def _elevation(rounded: FloatArray, tail: str) -> tuple[ByteMatrix, ByteMatrix] | None:
    """``repr`` of each value (already ``np.round(x, 3)``), then ``tail``: the integer part
    (NUL-padded on the left), and the fraction with ``tail`` (NUL-padded on the right)."""
    if len(rounded) and not (np.all(np.isfinite(rounded))
                             and np.abs(rounded).max() < 10.0 ** _MAX_INT_DIGITS):
        return None
    k = np.abs(np.rint(rounded * 1000.0)).astype(np.int64)
    whole, frac = np.divmod(k, 1000)
    n = len(rounded)
    sign = np.signbit(rounded).astype(np.int64)
    int_len = np.ones(n, dtype=np.int64)
    for d in range(1, _MAX_INT_DIGITS):
        int_len += whole >= 10 ** d
    int_len += sign
    # As narrow as the widest value: a table of two-digit elevations has no padding here.
    width = int(int_len.max())
    int_part = _digits(whole, width)
    negative = np.nonzero(sign)[0]
    int_part[negative, width - int_len[negative]] = ord("-")
    int_part[np.arange(width)[None, :] < (width - int_len)[:, None]] = 0
    raw_tail = np.frombuffer(tail.encode("ascii"), dtype=np.uint8)
    frac_part = np.zeros((n, 4 + len(raw_tail)), dtype=np.uint8)
    frac_part[:, 0] = ord(".")
    frac_part[:, 1:4] = _digits(frac, 3)
    frac_len = np.where(frac % 10 != 0, 4, np.where(frac % 100 != 0, 3, 2))
    for length in (2, 3, 4):
        rows = frac_len == length
        frac_part[rows, length:length + len(raw_tail)] = raw_tail
        frac_part[rows, length + len(raw_tail):] = 0
    return int_part, frac_part


def json_text(station_ids: Sequence[str], satellite_ids: Sequence[str], station: IntArray,
              satellite: IntArray, stamps: Sequence[ByteMatrix], max_elevation_deg: FloatArray,
              sep: str) -> str | None:
    """The JSON rows joined by ``sep``, or None when the row loop must write them.

    ``stamps`` are the AOS, TCA and LOS as ``(P, 23)`` ASCII byte matrices (ISO, ms, no Z).
    """
    n = len(station)
    if n == 0:
        return ""
    elevation = _elevation(np.round(max_elevation_deg, 3), "}" + sep)
    if elevation is None:
        return None
    names_st = _json_names(tuple(station_ids), '{"station": ', ', "satellite": ')
    names_sat = _json_names(tuple(satellite_ids), "", ', "aos": "')
    try:
        # The station's padding comes first and the fraction's last, so that one row's
        # padding runs into the next one's: one run of NULs to drop per row, mostly.
        pieces = [_name_table(names_st, True)[station], _name_table(names_sat, False)[satellite]]
    except UnicodeEncodeError:  # json.dumps escapes non-ASCII; this is for safety only
        return None
    pieces += [stamps[0], _constant('Z", "tca": "', n), stamps[1], _constant('Z", "los": "', n),
               stamps[2], _constant('Z", "max_elevation_deg": ', n), *elevation]
    # Padding is NUL, which no row holds (json.dumps escapes it): dropping it joins the pieces.
    text = np.concatenate(pieces, axis=1).tobytes().replace(b"\0", b"").decode("ascii")
    return text[:len(text) - len(sep)] if sep else text
