"""Checked JSON for control-plane messages: the size limit, the version, typed fields.

Every type in messages.py and worker_status.py reads its payload through :func:`read_object` and
:func:`get_field`, so that a bad payload always raises :class:`MessageError` with the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

MESSAGE_VERSION = 1
"""Version of the JSON control-plane messages (``"v"``; absent means 1)."""
MAX_CONTROL_BYTES = 64 * 1024
"""Larger control-plane payloads are refused unread."""

T = TypeVar("T")


class MessageError(ValueError):
    """A payload is not the message its topic carries; says why."""


def read_object(payload: bytes, what: str) -> dict[str, Any]:
    """``payload`` as a JSON object of a version this orbitmesh reads; raises MessageError."""
    if len(payload) > MAX_CONTROL_BYTES:
        raise MessageError(f"{what}: {len(payload)} bytes, more than {MAX_CONTROL_BYTES}")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # "[" * 1000 is deep enough
        raise MessageError(f"{what}: not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MessageError(f"{what}: expected a JSON object, got {type(body).__name__}")
    version = body.get("v", MESSAGE_VERSION)
    if version != MESSAGE_VERSION:
        raise MessageError(f"{what}: message version {version!r}, this orbitmesh reads "
                           f"{MESSAGE_VERSION}")
    return body


def get_field(body: Mapping[str, Any], key: str, kind: type[T], what: str, *,
              default: Any = ..., lo: float | None = None) -> T:
    """``body[key]`` checked to be a ``kind`` (ints pass for floats; numbers must be finite)."""
    if key not in body or body[key] is None:
        if default is ...:
            raise MessageError(f"{what}: {key!r} is missing")
        return default
    value = body[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"{what}: {key!r} must be {kind.__name__}, got {value!r}"[:200])
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError(f"{what}: {key!r} must be finite, got {value!r}")
    if lo is not None and isinstance(value, int | float) and value < lo:
        raise MessageError(f"{what}: {key!r} must be >= {lo:g}, got {value!r}")
    return value


def dumps(body: Mapping[str, Any]) -> bytes:
    """Compact JSON; NaN and infinity are refused, as every reader would refuse them."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
