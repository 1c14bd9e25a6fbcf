"""Checked reading of msgpack record streams: every record is decoded and its shape checked.

A trace stream (``events-*.msgpack``, ``links.msgpack``, ``replay.msgpack``) is a bare
concatenation of msgpack values. Damage is anything that is not a whole record of the expected
shape: bytes that do not decode, a record cut off by the end of the file, a value of the wrong
type (not a list, an unknown tag, a field of the wrong type). Each damage is reported with the
file, the byte offset of the record where it starts and how many good records came before.

Three ways to meet damage (``mode``):

* ``"raise"`` — :class:`TraceError` at the first damage (the records before it were yielded);
* ``"stop"`` — stop there and keep the :class:`Damage` in ``reader.damage``;
* ``"salvage"`` — skip to the next offset where a whole, well-shaped record starts (found by the
  byte signatures of the stream's records) and go on; every skip is kept with its byte count.
  A stream without signatures (each record a diff against the one before) stops instead.

A stream still being written (or whose writer was killed) ends in a partial record; with
``tail_ok`` that tail is noted in ``reader.partial_tail`` and is not damage.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack

from orbitmesh.errors import RunError

Mode = Literal["raise", "stop", "salvage"]
Check = Callable[[Any], str | None]
"""Returns what is wrong with a decoded record, or None when it has the expected shape."""


class TraceError(RunError):
    """A trace file is damaged (corrupt, truncated, or holds records of the wrong shape)."""


@dataclass(frozen=True)
class Damage:
    """One damaged place in a stream."""

    file: str
    offset: int
    """Byte offset of the first byte that is not part of a good record."""
    records_before: int
    """Good records read from the stream before this damage."""
    problem: str
    skipped_b: int | None = None
    """With salvage: bytes skipped to the next good record; None: reading stopped here."""

    def describe(self) -> str:
        """One line: file, offset, what is wrong, what was done about it."""
        then = ("reading stopped there" if self.skipped_b is None
                else f"skipped {self.skipped_b} byte(s) to the next whole record")
        return (f"{self.file}: byte {self.offset}: {self.problem} (after {self.records_before} "
                f"good record(s); {then})")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"file": self.file, "offset": self.offset, "records_before": self.records_before,
                "problem": self.problem, "skipped_b": self.skipped_b}


def salvage_hint(damage: Damage) -> str:
    """The message of a TraceError for ``damage``, saying what to do next."""
    return (f"damaged trace: {damage.describe()}; pass --salvage to read past the damage "
            "(what was skipped is reported)")


_UNPACK_ERRORS = (msgpack.UnpackException, ValueError, TypeError)
"""What a msgpack Unpacker raises on bytes that are not msgpack (FormatError, StackError and
oversized lengths are ValueErrors; a list used as a map key is a TypeError)."""


class RecordReader:
    """Iterate the well-shaped records of one stream, keeping every damage met."""

    def __init__(self, path: Path, check: Check | None = None, *, mode: Mode = "raise",
                 tail_ok: bool = False, signatures: Sequence[bytes] = ()) -> None:
        self.path = Path(path)
        self.check = check
        self.mode: Mode = mode
        self.tail_ok = tail_ok
        self.signatures = tuple(signatures)
        self.records = 0
        self.damage: list[Damage] = []
        self.partial_tail: int | None = None
        """Offset of a partial last record that ``tail_ok`` allowed."""
        self.size_b = 0
        self.end_offset = 0
        """Offset just after the last good record."""

    @property
    def skipped_b(self) -> int:
        """Bytes skipped over damage (salvage) or left unread after it."""
        return sum(self.size_b - d.offset if d.skipped_b is None else d.skipped_b
                   for d in self.damage)

    def __iter__(self) -> Iterator[Any]:
        with self.path.open("rb") as fh:
            self.size_b = self.path.stat().st_size
            base = 0
            while True:
                fh.seek(base)
                unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False)
                problem, at = None, base
                while True:
                    at = base + unpacker.tell()
                    try:
                        record = unpacker.unpack()
                    except msgpack.OutOfData:
                        if at < self.size_b:
                            problem = (f"the record starting here is cut off by the end of the "
                                       f"file ({self.size_b} bytes): truncated or corrupt")
                        break
                    except _UNPACK_ERRORS as exc:
                        why = str(exc) or type(exc).__name__
                        problem = f"bytes that are not a msgpack record ({why})"
                        break
                    wrong = self.check(record) if self.check is not None else None
                    if wrong is not None:
                        problem = f"record of the wrong shape: {wrong}"
                        break
                    self.records += 1
                    self.end_offset = base + unpacker.tell()
                    yield record
                if problem is None:
                    return
                if self.tail_ok and problem.startswith("the record starting here is cut off"):
                    self.partial_tail = at
                    return
                base = self._damaged(at, problem)
                if base < 0:
                    return

    def _damaged(self, at: int, problem: str) -> int:
        """Record the damage at ``at``; the offset to resume from, or -1 to stop."""
        resume = self._resync(at + 1) if self.mode == "salvage" and self.signatures else None
        damage = Damage(str(self.path), at, self.records, problem,
                        None if resume is None else resume - at)
        self.damage.append(damage)
        if self.mode == "raise":
            raise TraceError(salvage_hint(damage))
        return -1 if resume is None else resume

    def _resync(self, start: int) -> int | None:
        """The first offset at or after ``start`` where a well-shaped record decodes."""
        if self.size_b == 0:
            return None
        with self.path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            end = len(mm)
            while start < end:
                hits = [h for h in (mm.find(s, start) for s in self.signatures) if h >= 0]
                if not hits:
                    return None
                at = min(hits)
                unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
                unpacker.feed(mm[at:min(end, at + 65536)])
                try:
                    record = unpacker.unpack()
                except (msgpack.OutOfData, *_UNPACK_ERRORS):
                    record = None
                if record is not None and (self.check is None or self.check(record) is None):
                    return at
                start = at + 1
        return None
