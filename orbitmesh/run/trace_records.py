"""What each record of a trace looks like, and the checks that say what is wrong with one.

Frame events (``events-*.msgpack``, written by nodes/stats.py), link-timeline diffs
(``links.msgpack``) and replay frames (``replay.msgpack``); trace.py reads them through
:class:`orbitmesh.run.records.RecordReader` with these checks. Fields are checked by type, and
a record may carry more fields than listed (later minor versions append them).
"""

from __future__ import annotations

import itertools
from typing import Any

_NUM = (int, float)
# Leading fields every record of a tag has (after the tag), by type. Later minor versions may
# append fields; those are not checked here.
EVENT_FIELDS: dict[str, tuple[tuple[type, ...], ...]] = {
    "offer": (_NUM, (int,), (int,), (int,), (int,), (int,), (int,)),
    "hop": (_NUM, (int,), (int,), (int,), (int,), (int,)),
    "deliver": (_NUM, (int,), (int,), (int,), (int,), _NUM),
    "drop": (_NUM, (int,), (int,), (int,), (str,)),
    "suppress": (_NUM, (int,), (int,), (str,)),
    "packet": (_NUM, (int,), (bytes,)),
}
FIELD_NAMES = {"offer": ("wall", "frame", "flow", "kind", "source", "destination", "size"),
               "hop": ("wall", "frame", "flow", "from", "to", "size"),
               "deliver": ("wall", "frame", "flow", "node", "hops", "latency_ms"),
               "drop": ("wall", "frame", "flow", "node", "reason"),
               "suppress": ("wall", "flow", "source", "fault"),
               "packet": ("wall", "frame", "bytes")}
# How event records begin on disk (fixarray header + fixstr tag): where salvage resynchronises.
EVENT_SIGNATURES = (b"\x98\xa5offer", b"\x97\xa3hop", b"\x97\xa7deliver", b"\x9a\xa7deliver",
                    b"\x99\xa5offer", b"\x97\xa4drop", b"\x96\xa4drop", b"\x95\xa8suppress",
                    b"\x94\xa6packet")

_EXACT = {tag: (len(fields), frozenset(itertools.product(*fields)))
          for tag, fields in EVENT_FIELDS.items()}
"""Per tag: how many leading fields, and every tuple of their exact types that EVENT_FIELDS
allows (bool, an int subclass, is in none): the fast path of check_event."""


def check_event(record: Any) -> str | None:
    """What is wrong with a frame-event record, or None."""
    # Fast path for a well-formed record (a long run has millions): exact-type membership
    # accepts a subset of what the full check below accepts, and explains nothing.
    if type(record) is list and record and type(record[0]) is str:
        exact = _EXACT.get(record[0])
        if (exact is not None and len(record) > exact[0]
                and tuple(map(type, record[1:exact[0] + 1])) in exact[1]
                and (record[0] != "drop" or len(record) < 7 or record[6] is None
                     or type(record[6]) is str)):
            return None
    if not isinstance(record, list) or not record:
        return f"expected an event array, got {type(record).__name__}"
    fields = EVENT_FIELDS.get(record[0]) if isinstance(record[0], str) else None
    if fields is None:
        return f"unknown event tag {record[0]!r}"
    if len(record) <= len(fields):
        return f"{record[0]} record with {len(record)} fields, expected at least {len(fields) + 1}"
    for i, (types, value) in enumerate(zip(fields, record[1:], strict=False)):
        if not isinstance(value, types) or isinstance(value, bool):
            return (f"{record[0]} field {FIELD_NAMES[record[0]][i]} is "
                    f"{type(value).__name__} {value!r:.40}")
    if record[0] == "drop" and len(record) > 6 and not isinstance(record[6], str | None):
        return f"drop field fault is {type(record[6]).__name__}"
    return None


def _link_row(row: Any, width: int) -> bool:
    return (isinstance(row, list) and len(row) == width and isinstance(row[0], str)
            and isinstance(row[1], str) and isinstance(row[2], int)
            and (width == 3 or isinstance(row[3], _NUM)))


def check_link_record(record: Any) -> str | None:
    """What is wrong with a link-timeline record, or None."""
    if not isinstance(record, dict):
        return f"expected a map, got {type(record).__name__}"
    if not isinstance(record.get("t_s"), _NUM):
        return f"t_s is {record.get('t_s')!r:.40}, expected a number"
    for key, width in (("up", 4), ("changed", 4), ("down", 3)):
        rows = record.get(key)
        if not isinstance(rows, list) or not all(_link_row(r, width) for r in rows):
            return f"{key} is not a list of [a, b, class{', delay_s' if width == 4 else ''}]"
    return None


def check_replay_record(record: Any) -> str | None:
    """What is wrong with a replay record, or None."""
    if (isinstance(record, list) and len(record) == 5 and isinstance(record[0], _NUM)
            and all(isinstance(x, str) for x in record[1:4]) and isinstance(record[4], int)):
        return None
    return f"expected [t_s, flow, source, destination, size], got {record!r:.60}"
