"""Orbital elements from files: TLE (2- and 3-line) and OMM (CelesTrak GP CSV/XML/JSON).

The plane/slot structure of a shell inferred from them is in :mod:`orbitmesh.core.planes`.

Array conventions: every per-satellite array is ``(S,)`` in the order of the ``records`` it was
computed from; positions are TEME km with x/y/z on the last axis, as in
:mod:`orbitmesh.core.geometry`.

Loaders collect every problem in a file before raising one :class:`ScenarioError` whose
``problems`` each read ``<path>:<line>: <what is wrong, what was expected>`` (OMM JSON/XML records,
which have no useful line, are named ``<path>[<0-based record index>]``).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sgp4 import omm
from sgp4.alpha5 import from_alpha5
from sgp4.api import SGP4_ERRORS, Satrec
from sgp4.conveniences import check_satrec

from orbitmesh.core.geometry import SGP4_EPOCH_JD
from orbitmesh.errors import ScenarioError

TLE_LINE_LENGTH = 69
MAX_CATALOG_NUMBER = 339_999
"""Largest number Alpha-5 (and so sgp4) can hold: 'Z9999'."""
SGP4_EPOCH = datetime(1949, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class ElementRecord:
    """One satellite's mean elements, ready for SGP4, and where they came from."""

    name: str
    catalog_number: int
    satrec: Satrec
    epoch: datetime  # UTC, aware
    source: str  # "file:line" (or "file[index]" for OMM JSON/XML)


# ---------------------------------------------------------------------------------------- TLE

_FLOAT = r"\s*[+-]?(\d+\.?\d*|\.\d+)"
_EXP = r"\s*[+-]?\d{1,5}[ +-]?\d"
# (line, first column, last column (1-based, inclusive), field name, pattern, what is expected)
_TLE_FIELDS = (
    (1, 19, 20, "epoch year", r"[ \d]\d", "two digits"),
    (1, 21, 32, "epoch day", r"\s*\d{1,3}(\.\d*)?", "day of year like 263.38590896"),
    (1, 34, 43, "first derivative of mean motion", _FLOAT, "a decimal like -.00002182"),
    (1, 45, 52, "second derivative of mean motion", _EXP, "an implied-decimal like 00000-0"),
    (1, 54, 61, "BSTAR", _EXP, "an implied-decimal like -11606-4"),
    (2, 9, 16, "inclination", _FLOAT, "degrees like 53.1597"),
    (2, 18, 25, "right ascension of the ascending node", _FLOAT, "degrees like 307.1840"),
    (2, 27, 33, "eccentricity", r"\s*\d+", "seven digits like 0001009"),
    (2, 35, 42, "argument of perigee", _FLOAT, "degrees like 61.6382"),
    (2, 44, 51, "mean anomaly", _FLOAT, "degrees like 298.4729"),
    (2, 53, 63, "mean motion", _FLOAT, "revolutions per day like 15.49331404"),
)


def tle_checksum(line: str) -> int:
    """Modulo-10 checksum of a TLE line's first 68 columns (digits count, '-' counts 1)."""
    return sum(int(c) if c.isdigit() else c == "-" for c in line[:68]) % 10


def _read_text(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read {kind} file ({exc.strerror}); "
                            "check the path in the scenario") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: {kind} file is not UTF-8/ASCII text "
                            f"(byte {exc.start}); is it the right file?") from exc


def _parse_catalog(field: str) -> int | None:
    text = field.strip()
    if re.fullmatch(r"\d{1,5}|[A-HJ-NP-Z]\d{4}", text) is None:
        return None
    return int(from_alpha5(text))


def _check_tle_line(where: str, text: str, number: int) -> list[str]:
    """Length and checksum of one line of a TLE; empty when fine."""
    if len(text) != TLE_LINE_LENGTH:
        return [f"{where}: line {number} is {len(text)} characters long, "
                f"expected {TLE_LINE_LENGTH}"]
    expected = tle_checksum(text)
    if text[-1] != str(expected):
        got = text[-1] if text[-1].isdigit() else repr(text[-1])
        return [f"{where}: checksum is {got}, expected {expected} (last digit of line {number})"]
    return []


def _tle_record(path: Path, name: str | None, start: int, first: tuple[int, str],
                second: tuple[int, str]) -> tuple[ElementRecord | None, list[str]]:
    """Validate and parse one TLE (line numbers are 1-based file lines)."""
    (n1, l1), (n2, l2) = first, second
    w1, w2 = f"{path}:{n1}", f"{path}:{n2}"
    problems = _check_tle_line(w1, l1, 1) + _check_tle_line(w2, l2, 2)
    cat1, cat2 = _parse_catalog(l1[2:7]), _parse_catalog(l2[2:7])
    for where, text, catnr in ((w1, l1, cat1), (w2, l2, cat2)):
        if catnr is None:
            problems.append(f"{where}: catalogue number {text[2:7]!r} (columns 3-7) is neither "
                            "five digits nor Alpha-5 like A0404")
    if cat1 is not None and cat2 is not None and cat1 != cat2:
        problems.append(f"{w2}: catalogue number {l2[2:7].strip()} on line 2 does not match "
                        f"{l1[2:7].strip()} on line 1 ({w1})")
    if problems:
        return None, problems
    lines = {1: (w1, l1), 2: (w2, l2)}
    for line_no, lo, hi, label, pattern, expected in _TLE_FIELDS:
        where, text = lines[line_no]
        if re.fullmatch(pattern, text[lo - 1:hi]) is None:
            problems.append(f"{where}: {label} (columns {lo}-{hi} of line {line_no}) is "
                            f"{text[lo - 1:hi]!r}, expected {expected}")
    day = l1[20:32].strip()
    if not problems and not 1.0 <= float(day) < 367.0:
        problems.append(f"{w1}: epoch day {day} is outside 1-366")
    if problems:
        return None, problems
    try:
        sat = Satrec.twoline2rv(l1, l2)
    except (ValueError, IndexError) as exc:
        return None, [f"{w1}: sgp4 cannot parse this TLE: {str(exc).splitlines()[0]}"]
    usable = _usable(w1, sat)
    if usable:
        return None, usable
    assert cat1 is not None
    record = ElementRecord(name=name or f"SAT-{cat1}", catalog_number=cat1, satrec=sat,
                           epoch=satrec_epoch(sat), source=f"{path}:{start}")
    return record, []


def _usable(where: str, sat: Satrec) -> list[str]:
    """Problems that stop SGP4 from using these elements (sgp4init error, angles out of range)."""
    problems = []
    if sat.error:
        problems.append(f"{where}: SGP4 rejects these elements: "
                        f"{SGP4_ERRORS.get(sat.error, f'error {sat.error}')}")
    try:
        check_satrec(sat)
    except ValueError as exc:
        detail = "; ".join(s.strip() for s in str(exc).splitlines()[1:] if s.strip())
        problems.append(f"{where}: elements out of range: {detail}")
    return problems


def satrec_epoch(sat: Satrec) -> datetime:
    """Epoch of a Satrec as an aware UTC datetime (microsecond resolution)."""
    days = (sat.jdsatepoch - SGP4_EPOCH_JD) + sat.jdsatepochF
    return SGP4_EPOCH + timedelta(microseconds=round(days * 86_400e6))


def _next_starts(lines: Sequence[tuple[int, str]], k: int, prefix: str) -> bool:
    return k + 1 < len(lines) and lines[k + 1][1].startswith(prefix)


def _next_found(lines: Sequence[tuple[int, str]], k: int) -> str:
    if k + 1 == len(lines):
        return "the end of the file (truncated?)"
    return f"{lines[k + 1][1][:24]!r} at line {lines[k + 1][0]}"


def _keep(record: ElementRecord | None, records: dict[int, ElementRecord],
          problems: list[str]) -> None:
    """Keep a parsed record unless its catalogue number is already taken (then a problem)."""
    if record is not None and record.catalog_number in records:
        problems.append(f"{record.source}: catalogue number {record.catalog_number} already "
                        f"loaded from {records[record.catalog_number].source}; keep one element "
                        "set per satellite")
    elif record is not None:
        records[record.catalog_number] = record


def load_tle_file(path: Path) -> list[ElementRecord]:
    """Load a 2-line/3-line (mixed) TLE file, checking every line; raise one ScenarioError."""
    path = Path(path)
    lines = [(i, raw.rstrip()) for i, raw in enumerate(_read_text(path, "TLE").splitlines(), 1)]
    lines = [(i, text) for i, text in lines if text.strip()]
    records: dict[int, ElementRecord] = {}
    problems: list[str] = []
    k = 0
    while k < len(lines):
        start, text = lines[k]
        name = None
        if not text.startswith(("1 ", "2 ")):
            name = (text[2:] if text.startswith("0 ") else text).strip()
            if not _next_starts(lines, k, "1 "):
                problems.append(f"{path}:{start}: name line {name!r} must be followed by line 1 "
                                f"of its TLE (starting '1 '), found {_next_found(lines, k)}")
                k += 1
                continue
            k += 1
        n1, l1 = lines[k]
        if l1.startswith("2 "):
            problems.append(f"{path}:{n1}: line 2 of a TLE without its line 1 before it "
                            "(expected a name line or a line starting '1 ')")
        elif not _next_starts(lines, k, "2 "):
            problems.append(f"{path}:{n1}: line 1 must be followed by line 2 (starting '2 '), "
                            f"found {_next_found(lines, k)}")
        else:
            record, found = _tle_record(path, name, start, lines[k], lines[k + 1])
            problems += found
            _keep(record, records, problems)
            k += 1
        k += 1
    if not records and not problems:
        problems.append(f"{path}:1: no TLEs found (expected lines starting '1 ' and '2 ')")
    if problems:
        raise ScenarioError(f"{path}: {len(problems)} problem(s) in TLE file", problems=problems)
    return list(records.values())


# ---------------------------------------------------------------------------------------- OMM

_OMM_FLOATS = ("MEAN_MOTION", "ECCENTRICITY", "INCLINATION", "RA_OF_ASC_NODE",
               "ARG_OF_PERICENTER", "MEAN_ANOMALY", "BSTAR", "MEAN_MOTION_DOT",
               "MEAN_MOTION_DDOT")
# Bookkeeping fields sgp4.omm.initialize reads but SGP4 does not need; absent -> these defaults.
_OMM_DEFAULTS = {"CLASSIFICATION_TYPE": "U", "OBJECT_ID": "", "EPHEMERIS_TYPE": "0",
                 "ELEMENT_SET_NO": "999", "REV_AT_EPOCH": "0"}
_OMM_INTS = ("EPHEMERIS_TYPE", "ELEMENT_SET_NO", "REV_AT_EPOCH")


def _omm_record(where: str, raw: Mapping[Any, Any]) -> tuple[ElementRecord | None, list[str]]:
    """Validate one OMM record's fields and initialise its Satrec."""
    fields = {str(k): ("" if v is None else str(v).strip()) for k, v in raw.items() if k}
    problems = []
    for key in ("NORAD_CAT_ID", "EPOCH", *_OMM_FLOATS):
        if not fields.get(key):
            problems.append(f"{where}: field {key} is missing or empty")
    for key, default in _OMM_DEFAULTS.items():
        fields[key] = fields.get(key) or default
    for key in _OMM_FLOATS:
        if fields.get(key) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?",
                                            fields[key]) is None:
            problems.append(f"{where}: field {key} is {fields[key]!r}, expected a number")
    for key in (*_OMM_INTS, "NORAD_CAT_ID"):
        if fields.get(key) and re.fullmatch(r"\+?\d+", fields[key]) is None:
            problems.append(f"{where}: field {key} is {fields[key]!r}, expected an integer")
    catnr = (int(fields["NORAD_CAT_ID"])
             if re.fullmatch(r"\+?\d+", fields.get("NORAD_CAT_ID", "")) else None)
    if catnr is not None and not 0 < catnr <= MAX_CATALOG_NUMBER:
        problems.append(f"{where}: field NORAD_CAT_ID is {catnr}, expected 1-{MAX_CATALOG_NUMBER}"
                        " (SGP4 Satrec cannot hold larger numbers)")
    epoch = None
    if fields.get("EPOCH"):
        try:
            epoch = datetime.fromisoformat(fields["EPOCH"])
        except ValueError:
            problems.append(f"{where}: field EPOCH is {fields['EPOCH']!r}, expected UTC ISO 8601 "
                            "like 2026-09-20T12:42:37.141056")
    if problems:
        return None, problems
    assert epoch is not None and catnr is not None
    epoch = epoch.replace(tzinfo=UTC) if epoch.tzinfo is None else epoch.astimezone(UTC)
    fields["EPOCH"] = epoch.strftime("%Y-%m-%dT%H:%M:%S.%f")
    sat = Satrec()
    try:
        omm.initialize(sat, fields)
    except (KeyError, ValueError) as exc:
        return None, [f"{where}: sgp4 cannot initialise these elements: {exc}"]
    usable = _usable(where, sat)
    if usable:
        return None, usable
    name = fields.get("OBJECT_NAME") or f"SAT-{catnr}"
    return ElementRecord(name=name, catalog_number=catnr, satrec=sat, epoch=epoch,
                         source=where), []


OmmItem = tuple[str, Mapping[Any, Any] | str]
"""Where a record is, and its fields or (a string) the problem that stops reading it."""


def _omm_csv(path: Path) -> Iterator[OmmItem]:
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = omm.parse_csv(stream)
        lacking = [key for key in ("NORAD_CAT_ID", "EPOCH", *_OMM_FLOATS)
                   if key not in (reader.fieldnames or [])]
        if lacking:
            yield f"{path}:1", (f"CSV header lacks column(s) {', '.join(lacking)} "
                                "(expected the CelesTrak GP CSV header)")
            return
        for row in reader:
            extra = None in row
            yield f"{path}:{reader.line_num}", (
                "row has more values than the header has columns" if extra else row)


def _omm_json(path: Path) -> Iterator[OmmItem]:
    try:
        data = json.loads(_read_text(path, "OMM JSON"))
    except json.JSONDecodeError as exc:
        yield f"{path}:{exc.lineno}", f"not valid JSON: {exc.msg} (column {exc.colno})"
        return
    if not isinstance(data, list):
        yield str(path), ("expected a JSON list of OMM objects (CelesTrak GP JSON), "
                          f"found {type(data).__name__}")
        return
    for index, item in enumerate(data):
        yield f"{path}[{index}]", (item if isinstance(item, dict)
                                   else "expected a JSON object of OMM fields")


def _omm_xml(path: Path) -> Iterator[OmmItem]:
    index = 0
    with path.open("rb") as stream:
        segments = omm.parse_xml(stream)
        while True:
            try:
                fields = next(segments)
            except StopIteration:
                return
            except ET.ParseError as exc:
                yield f"{path}:{exc.position[0]}", f"not valid XML: {exc}"
                return
            except (AttributeError, TypeError):
                yield f"{path}[{index}]", ("<segment> must hold <metadata> and <data> with "
                                           "<meanElements> and <tleParameters> (CCSDS OMM XML "
                                           "as CelesTrak writes it)")
                return
            yield f"{path}[{index}]", fields
            index += 1


_OMM_READERS: dict[str, Callable[[Path], Iterator[OmmItem]]] = {
    ".csv": _omm_csv, ".json": _omm_json, ".xml": _omm_xml}


def load_omm_file(path: Path) -> list[ElementRecord]:
    """Load OMM records (CelesTrak GP CSV, XML or JSON, chosen by file extension)."""
    path = Path(path)
    reader = _OMM_READERS.get(path.suffix.lower())
    if reader is None:
        raise ScenarioError(f"{path}: unsupported OMM file extension {path.suffix!r}; use .csv, "
                            ".xml or .json (CelesTrak GP formats; KVN is not supported)")
    if not path.is_file():
        raise ScenarioError(f"{path}: OMM file not found; check the path in the scenario")
    records: dict[int, ElementRecord] = {}
    problems: list[str] = []
    try:
        for where, raw in reader(path):
            if isinstance(raw, str):
                problems.append(f"{where}: {raw}")
                continue
            record, found = _omm_record(where, raw)
            problems += found
            _keep(record, records, problems)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read OMM file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: OMM file is not UTF-8 text (byte {exc.start})") from exc
    if not records and not problems:
        problems.append(f"{path}: no OMM records found")
    if problems:
        raise ScenarioError(f"{path}: {len(problems)} problem(s) in OMM file", problems=problems)
    return list(records.values())


# ------------------------------------------------------------------------------ epochs, planes

def _as_utc(when: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken to be UTC, as in :mod:`orbitmesh.core.geometry`."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def stale_epochs(records: Iterable[ElementRecord], at: datetime,
                 max_age_days: float = 14.0) -> list[str]:
    """Warnings for element sets whose epoch is more than ``max_age_days`` from ``at``."""
    at = _as_utc(at)
    warnings = []
    for record in records:
        age_days = (at - record.epoch).total_seconds() / 86400.0
        if abs(age_days) > max_age_days:
            side = "before" if age_days > 0 else "after"
            warnings.append(
                f"{record.source}: {record.name} has elements from {record.epoch:%Y-%m-%d %H:%M}Z,"
                f" {abs(age_days):.1f} days {side} the scenario epoch {at:%Y-%m-%d %H:%M}Z; "
                "SGP4 error grows by roughly 1-3 km per day, so use fresher elements or move "
                "the scenario epoch closer")
    return warnings
