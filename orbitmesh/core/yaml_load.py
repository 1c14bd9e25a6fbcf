"""Bounded YAML for scenario files: size, nesting depth and alias expansion are limited.

PyYAML composes a node graph in which an alias *is* the anchored node, so a 470-byte
"billion laughs" file is a small graph that turns into 10**9 values as soon as anything walks it
(the line index, pydantic, a JSON dump). The composer below counts, while it composes, how many
nodes the document has once every alias is expanded, and stops at ``MAX_NODES``; an alias to a
node that is still being composed is a cycle (a recursive alias) and is refused; nesting deeper
than ``MAX_DEPTH`` is refused before Python's own recursion limit is reached. Everything goes
through PyYAML's public Composer/Constructor methods (``compose_node``, ``construct_object``).

The same pass records the line of every path (mapping keys and sequence indices), so error
messages can name ``file:line: field.path`` without parsing the text twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.error import MarkedYAMLError
from yaml.events import AliasEvent

from orbitmesh.core.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from orbitmesh.errors import ScenarioError

# libyaml scans and parses ~10x faster than PyYAML's Python parser; Composer comes first in the
# bases so that composition (where the limits are counted) stays in Python either way.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path_ = tuple[str | int, ...]
Lines = dict[Path_, int]


class YamlProblem(MarkedYAMLError):
    """A document beyond the limits (too deep, too large once expanded, recursive) or a value
    Python cannot hold; ``problem`` already names the field path."""


class _BoundedLoader(Composer, _Base):
    """SafeLoader semantics with a bounded composer and a line index."""

    def __init__(self, text: str) -> None:
        _Base.__init__(self, text)
        Composer.__init__(self)
        self.lines: Lines = {}
        self.path: list[str | int] = []
        self.depth = 0
        self.expanded = 0  # nodes composed so far, aliases counted at their expanded size
        self.sizes: dict[int, int] = {}  # id(node) -> expanded size, once composed
        self.paths: dict[int, Path_] = {}  # id(node) -> first path, for construction errors

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose one node, charging its expanded size against ``MAX_NODES``."""
        if parent is not None:
            self.path.append("(key)" if index is None
                             else index.value if isinstance(index, yaml.ScalarNode)
                             else index if isinstance(index, int) else "(complex key)")
        try:
            return self._compose(parent, index)
        finally:
            if parent is not None:
                self.path.pop()

    def _compose(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        here = tuple(self.path)
        event: Any = self.peek_event()  # never None inside a document
        mark = event.start_mark
        if isinstance(event, AliasEvent):
            node: Any = super().compose_node(parent, index)
            size = self.sizes.get(id(node))
            if size is None:
                raise YamlProblem(None, None, f"{dotted(here)}: alias *{event.anchor} "
                                     "refers to a node that contains it (a recursive alias); "
                                     "expected a tree", mark)
            self._charge(size, here, mark)
            self.lines.setdefault(here, mark.line + 1)
            return node
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise YamlProblem(None, None, f"{dotted(here)}: nested more than {MAX_DEPTH} "
                                 "levels deep; expected a scenario (a few levels)", mark)
        before = self.expanded
        self._charge(1, here, mark)
        node = super().compose_node(parent, index)
        self.depth -= 1
        self.sizes[id(node)] = self.expanded - before
        self.paths.setdefault(id(node), here)
        self.lines.setdefault(here, mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._index_keys(node, here)
        return node

    def _index_keys(self, node: yaml.MappingNode, here: Path_) -> None:
        # A key's line beats its value's (a value may start on the next line). A repeated key
        # would silently win over the first one, so it is an error.
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            line = key.start_mark.line + 1
            if key.value in seen:
                raise YamlProblem(None, None, f"{dotted((*here, key.value))}: duplicate key "
                                     f"(first given on line {seen[key.value]}); give each key "
                                     "once", key.start_mark)
            seen[key.value] = line
            self.lines[(*here, key.value)] = line

    def _charge(self, nodes: int, here: Path_, mark: Any) -> None:
        self.expanded += nodes
        if self.expanded > MAX_NODES:
            raise YamlProblem(None, None, f"{dotted(here)}: the document grows past "
                                 f"{MAX_NODES:,} YAML nodes once aliases are expanded; expected "
                                 "a scenario of at most that size (are aliases nested?)", mark)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct like SafeLoader; a value Python cannot hold becomes a marked error."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            where = dotted(self.paths.get(id(node), ()))
            kind = str(node.tag).rsplit(":", 1)[-1]
            reason = str(exc).split(";")[0]  # drop Python's advice (set_int_max_str_digits)
            raise YamlProblem(None, None, f"{where}: cannot read {kind} {str(node.value)[:40]!r}"
                              f": {reason}", node.start_mark) from exc


def read_text(path: Path) -> str:
    """The file's text, refused if it is larger than ``MAX_FILE_BYTES`` or not UTF-8."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError(f"{path}: larger than {MAX_FILE_BYTES:,} bytes; expected a scenario "
                            "file (element sets belong in tle/omm files)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ScenarioError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                            f"{exc.start}); save the file as UTF-8") from exc


def load_yaml(text: str, source: Path) -> tuple[Any, Lines]:
    """Parse one YAML document within the limits; returns the data and the line of each path."""
    if len(text) > MAX_FILE_BYTES:
        raise ScenarioError(f"{source}: larger than {MAX_FILE_BYTES:,} characters; expected a "
                            "scenario file")
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else str(source)
        problem = getattr(exc, "problem", None) or str(exc)
        if not isinstance(exc, YamlProblem):
            problem = f"not valid YAML: {problem}"
        raise ScenarioError(f"{where}: {problem}") from exc
    finally:
        loader.dispose()
    return data, loader.lines


def line_of(lines: Lines, loc: Path_) -> int | None:
    """The line of ``loc``, or of its nearest ancestor that has one."""
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def dotted(loc: Path_) -> str:
    """``("stations", 3, "lat_deg")`` as ``stations[3].lat_deg``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"

