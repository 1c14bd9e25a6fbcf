"""The one exception tree of orbitmesh.

    OrbitmeshError
     +-- ScenarioError     a scenario file (or a file it refers to) is malformed
     +-- GeometryError     propagation or frame conversion failed
     +-- RoutingError      a route was asked for that the graph cannot give
     +-- BrokerError       the MQTT broker cannot be started, reached or used
     +-- RunError          a live run failed (worker died, conservation broken, ...)
     +-- InputError        a command-line argument names nothing that exists (run id, image)

Messages say what failed and what to do next. Foreign errors are translated where they enter,
with ``raise ... from exc``.
"""

from __future__ import annotations


class OrbitmeshError(Exception):
    """Base class of every error orbitmesh raises on purpose."""


class ScenarioError(OrbitmeshError):
    """A scenario is malformed; ``problems`` lists every finding as one line each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message if problems is None else "\n".join([message, *problems]))


class GeometryError(OrbitmeshError):
    """Propagation or frame conversion failed."""


class RoutingError(OrbitmeshError):
    """A route was requested that cannot be computed (unknown node, bad policy)."""


class BrokerError(OrbitmeshError):
    """The MQTT broker cannot be started, reached or used."""


class RunError(OrbitmeshError):
    """A live emulation run failed."""


class InputError(OrbitmeshError):
    """A command-line argument names something that does not exist (a run id, an image)."""
