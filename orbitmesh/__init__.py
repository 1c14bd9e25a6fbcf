"""orbitmesh: a distributed ground-segment network emulator.

The notebook API (docs/python-api.md): ``orbitmesh.load(scenario)`` and
``orbitmesh.open_trace(run)``, defined in :mod:`orbitmesh.api`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ScenarioHandle", "TraceHandle", "__version__", "load", "open_trace"]

if TYPE_CHECKING:
    from orbitmesh.api import ScenarioHandle, TraceHandle, load, open_trace


def __getattr__(name: str) -> Any:
    # Imported on first use: worker processes and `orbitmesh --version` need none of it.
    if name in ("load", "open_trace", "ScenarioHandle", "TraceHandle"):
        from orbitmesh import api

        return getattr(api, name)
    raise AttributeError(f"module 'orbitmesh' has no attribute {name!r}")
