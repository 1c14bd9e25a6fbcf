"""docs/scenarios.md against the scenario model: every key documented with its real default, and
every example in it valid.

Conventions in docs/scenarios.md that these tests rely on:

* each model has a section (see ``SECTIONS``) holding a table whose first column is the key in
  backticks and whose fourth column is its default (``required``, ``all defaults`` for a nested
  model, ``null``/``none`` for None, ``[]``, ``{}``, ``""`` or the value);
* a ```yaml block whose first non-comment line starts with ``name:`` is a whole scenario and must
  load, build and name only real nodes in its flows;
* a whole-scenario block whose first line is ``# docs-test: invalid`` must fail, and each problem
  it reports (minus the file path) must appear in the docs; ``# docs-test: skip`` opts a block out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from orbitmesh.core.endpoint_spec import EndpointContainer, Endpoints, IpEndpoint, UdpPipe
from orbitmesh.core.fault_spec import FaultSpec, MtbfSpec, RandomFaults
from orbitmesh.core.mcs_spec import McsSpec
from orbitmesh.core.scenario import (
    Constellation,
    Fidelity,
    Flow,
    GslRules,
    IslRules,
    LinkClass,
    LinkRules,
    OpsCentre,
    Policy,
    Routing,
    Scenario,
    SizeSpec,
    Station,
    TelemetrySpec,
    TerrestrialRules,
    WalkerShell,
    load_scenario,
)
from orbitmesh.core.topology import build_topology
from orbitmesh.errors import ScenarioError

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "scenarios.md"
DOC = DOC_PATH.read_text(encoding="utf-8")

SECTIONS: dict[type[BaseModel], str] = {
    Scenario: "Top level",
    Endpoints: "endpoints",
    McsSpec: "ops_centres.mcs",
    IpEndpoint: "endpoints.ip",
    EndpointContainer: "endpoints.ip[].container",
    UdpPipe: "endpoints.udp",
    Constellation: "Constellations",
    WalkerShell: "walker",
    TelemetrySpec: "telemetry",
    Station: "Stations",
    OpsCentre: "ops_centres",
    LinkRules: "links",
    LinkClass: "links",
    IslRules: "links.isl",
    GslRules: "links.gsl",
    TerrestrialRules: "links.terrestrial",
    Routing: "routing",
    Policy: "routing",
    Flow: "traffic",
    SizeSpec: "traffic",
    FaultSpec: "faults",
    RandomFaults: "random_faults",
    MtbfSpec: "random_faults",
    Fidelity: "fidelity",
}
INVALID, SKIP = "# docs-test: invalid", "# docs-test: skip"


def nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """Model classes inside a field annotation (through Optional, tuple, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from nested_models(arg)


def reachable_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model reachable from its fields."""
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo.extend(nested_models(field.annotation))
    return seen


def section_rows(heading: str) -> dict[str, list[str]]:
    """Key -> table cells of every table row in the section under ``heading`` (to the next one)."""
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", DOC, re.M | re.S)
    assert match, f"docs/scenarios.md has no heading {heading!r}"
    rows: dict[str, list[str]] = {}
    for line in match.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        key = re.fullmatch(r"`([A-Za-z_]\w*)`", cells[0]) if line.startswith("|") else None
        if key:
            rows[key.group(1)] = cells
    return rows


def numbers(text: str) -> list[float]:
    """Every number written in ``text`` (``1,000``, ``0.1``, ``100e6`` ...)."""
    return [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?", text)]


def documents_default(cell: str, field: FieldInfo) -> bool:
    """Does a Default cell state this field's default?"""
    if field.is_required():
        return "required" in cell
    default = field.default
    if isinstance(default, BaseModel):
        return "all defaults" in cell
    if default is None:
        return "null" in cell or "none" in cell
    if isinstance(default, bool):
        return str(default).lower() in cell
    if isinstance(default, (int, float)):
        return float(default) in numbers(cell)
    if default == "":
        return '""' in cell
    if isinstance(default, str):
        return f"`{default}`" in cell
    if default == ():
        return "[]" in cell
    if default == {}:
        return "{}" in cell
    raise AssertionError(f"no rule to check a default like {default!r}; extend documents_default")


MODELS = reachable_models(Scenario)


def test_walk_reaches_every_nested_model() -> None:
    # Guards the walk itself: a model nested in a tuple, an Optional or a dict must be found.
    assert {Constellation, WalkerShell, TelemetrySpec, SizeSpec, Policy, IslRules} <= set(MODELS)
    unmapped = [m.__name__ for m in MODELS if m not in SECTIONS]
    assert not unmapped, f"document {unmapped} in docs/scenarios.md and add them to SECTIONS"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_key_is_documented_with_its_default(model: type[BaseModel]) -> None:
    # A field inherited from a base model may be documented in the base model's section.
    sections = [SECTIONS[c] for c in model.__mro__ if c in SECTIONS]
    problems = []
    for name, field in model.model_fields.items():
        row = next((rows[name] for rows in map(section_rows, sections) if name in rows), None)
        if row is None:
            problems.append(f"`{name}` has no table row under {sections}")
        elif len(row) < 4 or not documents_default(row[3], field):
            problems.append(f"`{name}`: default cell {row[3:4]} does not state {field.default!r}")
    assert not problems, "\n".join(problems)


YAML_BLOCKS = re.findall(r"^```yaml\n(.*?)^```", DOC, re.M | re.S)


def is_scenario(block: str) -> bool:
    """A whole scenario: the first line that is not a comment starts with ``name:``."""
    body = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return bool(body) and body[0].startswith("name:")


SCENARIO_BLOCKS = [b for b in YAML_BLOCKS if is_scenario(b)]


def test_docs_have_examples() -> None:
    assert len(SCENARIO_BLOCKS) >= 3  # worked example, TLE example, error example
    assert any(b.startswith(INVALID) for b in SCENARIO_BLOCKS)


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.split("\n", 1)[0][:40])
def test_yaml_blocks_are_yaml(block: str) -> None:
    assert yaml.safe_load(block) is not None


def write_example(block: str, tmp_path: Path) -> Path:
    """The block as a scenario file whose ``data/`` folder is the shipped scenarios/data."""
    (tmp_path / "data").symlink_to(ROOT / "scenarios" / "data", target_is_directory=True)
    path = tmp_path / "example.yaml"
    path.write_text(block, encoding="utf-8")
    return path


@pytest.mark.parametrize("block", SCENARIO_BLOCKS, ids=lambda b: b.split("\n", 1)[0][:40])
def test_scenario_examples(block: str, tmp_path: Path) -> None:
    if block.startswith(SKIP):
        pytest.skip("marked '# docs-test: skip' in docs/scenarios.md")
    path = write_example(block, tmp_path)
    if block.startswith(INVALID):
        with pytest.raises(ScenarioError) as info:
            load_scenario(path)
        missing = [p for p in info.value.problems
                   if p.removeprefix(f"{path}:") not in DOC]
        assert not missing, f"the docs do not show these problems: {missing}"
        return
    topology = build_topology(load_scenario(path))
    assert not topology.warnings
    for flow in topology.scenario.traffic:
        topology.node(flow.source)
        topology.node(flow.destination)

