"""Progress for long CLI jobs: a rich bar on standard error when it is a terminal, else nothing.

Pipes, files and CI logs stay clean: the callback is a no-op unless ``sys.stderr.isatty()``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress(label: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A callback reporting ``done`` (of ``total``; None: a count without an end)."""
    if not sys.stderr.isatty():
        yield lambda _done: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TimeElapsedColumn,
    )

    label_column = "[progress.description]{task.description}"
    columns: list[str | ProgressColumn] = (
        [label_column, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        if total is not None else [label_column, "{task.completed:,}", TimeElapsedColumn()])
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)
