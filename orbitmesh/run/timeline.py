"""The link timeline the controller writes: ``links.msgpack``, one record per tick computed.

Each record holds the tick's diff with node ids (read back by :func:`orbitmesh.run.trace.
read_link_timeline`). Written from the controller's tick thread, in the order ticks are computed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import msgpack
import numpy as np

from orbitmesh.core.engine import Tick
from orbitmesh.core.links import LinkState
from orbitmesh.run.files import DiskError, close_reporting, is_disk_error

log = logging.getLogger("orbitmesh.run.controller")
FILE = "links.msgpack"


class LinkTimeline:
    """Appends each tick's diff to ``out_dir/links.msgpack`` (nothing without ``out_dir``)."""

    def __init__(self, out_dir: Path | None, node_ids: Sequence[str]) -> None:
        self.path = out_dir / FILE if out_dir else None
        self._file: IO[bytes] | None = self.path.open("wb") if self.path else None
        self._packer = msgpack.Packer(use_bin_type=True)
        self._ids = node_ids
        self.write_error: DiskError | None = None
        """Set when the disk filled up under the timeline (the run reports it at the end)."""

    def record(self, tick: Tick) -> None:
        """Append ``tick``; a full disk ends the timeline (``write_error``), not the run."""
        if self._file is None:
            return
        try:
            self._file.write(self._packer.pack(self._row(tick)))
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            self.write_error = DiskError(self.path or FILE, exc)
            log.error("%s; the link timeline stops here", self.write_error)
            close_reporting(self._file, self.path or FILE)
            self._file = None

    def _row(self, tick: Tick) -> dict[str, Any]:
        s, d, ids = tick.state, tick.diff, self._ids

        def rows(idx: np.ndarray, st: LinkState) -> list[list[Any]]:
            return [[ids[st.a[i]], ids[st.b[i]], int(st.kind[i]), float(st.delay_s[i])]
                    for i in idx.tolist()]

        return {"t_s": tick.t_s, "up": rows(d.up, s), "changed": rows(d.delay_changed, s),
                "down": [[ids[a], ids[b], int(k)] for a, b, k in
                         zip(d.down_a.tolist(), d.down_b.tolist(), d.down_kind.tolist(),
                             strict=True)],
                "handovers": tick.handovers, "route_changes": tick.route_changes}

    def close(self) -> None:
        """Close the file; a full disk is kept in ``write_error``, not raised."""
        if self._file is not None:
            error = close_reporting(self._file, self.path or FILE)
            self.write_error = self.write_error or error
            self._file = None
