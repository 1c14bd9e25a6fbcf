"""Pass results: the :class:`Pass` record, the columnar :class:`PassTable` the search produces,
and their text forms (JSON rows, the human table).

A table keeps times as float seconds after ``ref`` so that a day of a large shell (a quarter of
a million passes) is formatted with numpy instead of a quarter of a million ``datetime`` objects.
Array axes: ``(P,)`` = passes, sorted by AOS, then station id, then satellite id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
_BLOCK = 65536  # rows converted to Python objects at once (bounds the floats alive)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Pass:
    """One pass of a satellite over a station, above that station's elevation mask."""

    station: str
    satellite: str
    aos: datetime
    tca: datetime
    los: datetime
    max_elevation_deg: float
    tca_range_km: float
    max_range_km: float  # the larger of the ranges at AOS and LOS (the low-elevation ends)

    @property
    def duration_s(self) -> float:
        """Seconds from AOS to LOS."""
        return (self.los - self.aos).total_seconds()


@dataclass(frozen=True)
class PassTable:
    """Passes as columns; times are seconds after ``ref``."""

    ref: datetime
    station_ids: tuple[str, ...]
    satellite_ids: tuple[str, ...]
    station: IntArray  # (P,) index into station_ids
    satellite: IntArray  # (P,) index into satellite_ids
    aos_s: FloatArray
    tca_s: FloatArray
    los_s: FloatArray
    max_elevation_deg: FloatArray
    tca_range_km: FloatArray
    max_range_km: FloatArray

    @classmethod
    def empty(cls, ref: datetime, station_ids: Sequence[str],
              satellite_ids: Sequence[str]) -> PassTable:
        """A table with no passes."""
        i, f = np.empty(0, np.int64), np.empty(0)
        return cls(ref, tuple(station_ids), tuple(satellite_ids), i, i, f, f, f, f, f, f)

    @classmethod
    def concat(cls, tables: Sequence[PassTable]) -> PassTable:
        """The rows of ``tables`` one after the other (same ref and ids)."""
        first = tables[0]
        return cls(first.ref, first.station_ids, first.satellite_ids,
                   *(np.concatenate([np.asarray(getattr(t, c)) for t in tables])
                     for c in _COLUMNS))

    def __len__(self) -> int:
        return int(self.station.shape[0])

    def select(self, rows: NDArray[np.bool_] | IntArray) -> PassTable:
        """The rows picked by a mask or index array (order kept)."""
        return PassTable(self.ref, self.station_ids, self.satellite_ids,
                         *(np.asarray(getattr(self, c))[rows] for c in _COLUMNS))

    def passes(self) -> list[Pass]:
        """The rows as :class:`Pass` records."""
        out: list[Pass] = []
        ref, st, sat = self.ref, self.station_ids, self.satellite_ids
        for b0 in range(0, len(self), _BLOCK):
            cols = [np.asarray(getattr(self, c))[b0:b0 + _BLOCK].tolist() for c in _COLUMNS]
            out.extend(Pass(st[g], sat[s], ref + timedelta(seconds=a), ref + timedelta(seconds=c),
                            ref + timedelta(seconds=lo), e, r, m)
                       for g, s, a, c, lo, e, r, m in zip(*cols, strict=True))
        return out

    def _stamps(self, offsets_s: FloatArray) -> NDArray[np.datetime64]:
        """Offsets as UTC datetime64 microseconds (rounded as ``timedelta`` rounds them)."""
        base = np.datetime64(_utc(self.ref).replace(tzinfo=None), "us")
        return base + np.rint(offsets_s * 1e6).astype("timedelta64[us]")

    def iso_utc(self, offsets_s: FloatArray) -> NDArray[np.str_]:
        """ISO-8601 UTC strings with milliseconds and ``Z`` (rounded to the nearest ms)."""
        return np.char.add(self._iso_ms(offsets_s), "Z")

    def _iso_ms(self, offsets_s: FloatArray) -> NDArray[np.str_]:
        ms = (self._stamps(offsets_s) + np.timedelta64(500, "us")).astype("datetime64[ms]")
        return _iso_ms(ms)

    def json_text(self, sep: str = ",\n  ") -> str:
        """The rows of :meth:`json_rows` joined by ``sep``, built by numpy (same bytes)."""
        from orbitmesh.core._pass_text import json_text

        ms = [(self._stamps(c) + np.timedelta64(500, "us")).astype("datetime64[ms]")
              for c in (self.aos_s, self.tca_s, self.los_s)]
        stamps = [_iso_bytes(m) for m in ms]
        if len(self) and all(s is not None for s in stamps):
            text = json_text(self.station_ids, self.satellite_ids, self.station, self.satellite,
                             [s for s in stamps if s is not None], self.max_elevation_deg, sep)
            if text is not None:
                return text
        return sep.join(self.json_rows())

    def json_rows(self) -> Iterator[str]:
        """One compact JSON object per pass, as :func:`passes_to_json` spells it."""
        st = [json.dumps(n) for n in self.station_ids]
        sat = [json.dumps(n) for n in self.satellite_ids]
        for b0 in range(0, len(self), _BLOCK):
            part = slice(b0, b0 + _BLOCK)
            # Whole columns are formatted by numpy; the row loop only joins strings.
            aos, tca, los = (self._iso_ms(c[part]).tolist()
                             for c in (self.aos_s, self.tca_s, self.los_s))
            el = np.round(self.max_elevation_deg[part], 3).tolist()
            for g, s, a, c, lo, e in zip(self.station[part].tolist(),
                                         self.satellite[part].tolist(), aos, tca, los, el,
                                         strict=True):
                yield (f'{{"station": {st[g]}, "satellite": {sat[s]}, "aos": "{a}Z", '
                       f'"tca": "{c}Z", "los": "{lo}Z", "max_elevation_deg": {e!r}}}')

    def table_rows(self, widths: Sequence[int]) -> Iterator[str]:
        """The rows of :func:`format_table` (with a newline) in columns of ``widths``."""
        w_st, w_sat, w_t, _, w_dur, w_el = widths[0], widths[1], widths[2], 0, widths[5], \
            widths[6]
        st = [n.ljust(w_st) for n in self.station_ids]
        sat = [n.ljust(w_sat) for n in self.satellite_ids]
        for b0 in range(0, len(self), _BLOCK):
            part = slice(b0, b0 + _BLOCK)
            stamps = [self._stamps(c[part]) for c in (self.aos_s, self.tca_s, self.los_s)]
            aos, tca, los = (_iso_ms(x.astype("datetime64[s]"), " ", milliseconds=False)
                             .tolist() for x in stamps)
            dur_s = ((stamps[2] - stamps[0]) // np.timedelta64(1, "s")).astype(np.int64)
            dur = [f"{d // 60:d}m{d % 60:02d}s".rjust(w_dur) for d in dur_s.tolist()]
            for g, s, a, c, lo, d, e in zip(self.station[part].tolist(),
                                            self.satellite[part].tolist(), aos, tca, los, dur,
                                            self.max_elevation_deg[part].tolist(), strict=True):
                yield (f"{st[g]}  {sat[s]}  {a.rjust(w_t)}  {c.rjust(w_t)}  {lo.rjust(w_t)}  "
                       f"{d}  {f'{e:6.2f}°'.rjust(w_el)}\n")


def _iso_ms(ms: NDArray[np.datetime64], sep: str = "T", *,
            milliseconds: bool = True) -> NDArray[np.str_]:
    """``datetime_as_string(ms, unit="ms")``, spelled out digit by digit (several times faster).

    With ``milliseconds=False`` the time is cut to whole seconds (floored), ``unit="s"``'s
    form; ``sep`` goes between date and time.
    """
    width = 23 if milliseconds else 19
    out = _iso_bytes(ms, sep, milliseconds=milliseconds)
    if out is None:  # years beyond 0..9999
        text = np.datetime_as_string(ms, unit="ms" if milliseconds else "s")
        return np.char.replace(text, "T", sep) if sep != "T" else text
    return out.view(f"S{width}").reshape(-1).astype(f"U{width}")


def _iso_bytes(ms: NDArray[np.datetime64], sep: str = "T", *,
               milliseconds: bool = True) -> NDArray[np.uint8] | None:
    """:func:`_iso_ms` as an ASCII byte matrix ``(P, 23)`` (``(P, 19)`` without milliseconds).

    None for no rows or years beyond 0..9999. A day's passes share their date: it is formatted
    once per distinct day and the time of day is written as digits into the matrix.
    """
    count = np.asarray(ms, dtype="datetime64[ms]").astype(np.int64)
    day, tod = np.divmod(count, 86_400_000)
    if len(count) == 0:
        return None
    first, last = int(day.min()), int(day.max())
    if last - first < 4096:  # a short window: every day of it, not a sort for the distinct ones
        days, which = np.arange(first, last + 1), day - first
    else:
        days, which = np.unique(day, return_inverse=True)
    dates = np.datetime_as_string(days.astype("datetime64[D]"))
    if any(len(d) != 10 for d in dates.tolist()):
        return None
    hh, rest = np.divmod(tod, 3_600_000)
    mm, rest = np.divmod(rest, 60_000)
    ss, frac = np.divmod(rest, 1000)
    # One record of fixed-width byte fields per row: each field is one gather from a table.
    out = np.empty(len(count), _STAMP_MS if milliseconds else _STAMP_S)
    out["date"] = dates.astype("S10")[which.reshape(-1)]
    out["sep"], out["c1"], out["c2"] = sep.encode("ascii"), b":", b":"
    out["hh"], out["mm"], out["ss"] = _TWO_DIGITS[hh], _TWO_DIGITS[mm], _TWO_DIGITS[ss]
    if milliseconds:
        out["dot"], out["ms"] = b".", _THREE_DIGITS[frac]
    return out.view(np.uint8).reshape(len(count), out.dtype.itemsize)


_TWO_DIGITS = np.array([f"{i:02d}".encode("ascii") for i in range(100)], dtype="S2")
_THREE_DIGITS = np.array([f"{i:03d}".encode("ascii") for i in range(1000)], dtype="S3")
_STAMP_S = np.dtype([("date", "S10"), ("sep", "S1"), ("hh", "S2"), ("c1", "S1"), ("mm", "S2"),
                     ("c2", "S1"), ("ss", "S2")])
_STAMP_MS = np.dtype([*_STAMP_S.descr, ("dot", "S1"), ("ms", "S3")])


_HEADER = ("station", "satellite", "AOS (UTC)", "TCA (UTC)", "LOS (UTC)", "duration", "max el")


def table_widths(station_ids: Sequence[str], satellite_ids: Sequence[str],
                 longest_s: float) -> tuple[int, ...]:
    """Column widths that fit every pass of these ids lasting at most ``longest_s``."""
    longest = max(0, int(longest_s))
    return (max([len(_HEADER[0]), *map(len, station_ids)]),
            max([len(_HEADER[1]), *map(len, satellite_ids)]), 19, 19, 19,
            max(len(_HEADER[5]), len(f"{longest // 60:d}m00s")), len(_HEADER[6]) + 1)


def table_header(widths: Sequence[int]) -> str:
    """The header and rule lines of the pass table (with newlines)."""
    head = "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(_HEADER, widths, strict=True))).rstrip()
    return head + "\n" + "  ".join("-" * w for w in widths) + "\n"


_COLUMNS = ("station", "satellite", "aos_s", "tca_s", "los_s", "max_elevation_deg",
            "tca_range_km", "max_range_km")


def iso_utc(when: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, e.g. ``2026-01-01T00:03:12.345Z``."""
    rounded = _utc(when) + timedelta(microseconds=500)
    return f"{rounded:%Y-%m-%dT%H:%M:%S}.{rounded.microsecond // 1000:03d}Z"


def passes_to_json(passes: Sequence[Pass]) -> list[dict[str, Any]]:
    """JSON-ready records: station, satellite, aos, tca, los (ISO UTC ``Z``), max_elevation_deg."""
    return [{"station": p.station, "satellite": p.satellite, "aos": iso_utc(p.aos),
             "tca": iso_utc(p.tca), "los": iso_utc(p.los),
             "max_elevation_deg": round(p.max_elevation_deg, 3)} for p in passes]


def format_table(passes: Sequence[Pass]) -> str:
    """Human-readable pass table, one row per pass in the given order."""
    header = ("station", "satellite", "AOS (UTC)", "TCA (UTC)", "LOS (UTC)", "duration",
              "max el")
    rows = [header] + [
        (p.station, p.satellite, f"{_utc(p.aos):%Y-%m-%d %H:%M:%S}",
         f"{_utc(p.tca):%Y-%m-%d %H:%M:%S}", f"{_utc(p.los):%Y-%m-%d %H:%M:%S}",
         f"{int(p.duration_s) // 60:d}m{int(p.duration_s) % 60:02d}s",
         f"{p.max_elevation_deg:6.2f}°") for p in passes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
