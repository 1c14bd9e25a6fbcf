"""Replay recorded (or imported) traffic into a scenario.

The offered user traffic of a trace (or of an imported CSV / pcap) replaces the scenario's own
flows: one flow per recorded flow name, with pattern ``replay``, whose frames are offered at the
recorded scenario times and sizes. ``links_from`` replays the recorded link timeline instead of
geometry; ``faults_from`` schedules the recorded faults again. The scenario the replay ran is
written to the new run directory like any other run's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import yaml

from orbitmesh.core.scenario import FaultSpec, Flow, Scenario
from orbitmesh.errors import ScenarioError
from orbitmesh.run.trace import REPLAY_FILE, Offered, read_manifest


def replay_scenario(scenario: Scenario, offered: list[Offered], *, duration_s: float,
                    faults: list[dict[str, Any]] | None = None) -> Scenario:
    """``scenario`` with its traffic replaced by replay flows (and faults, if given)."""
    if not offered:
        raise ScenarioError("nothing to replay: the trace offered no user traffic")
    counts = Counter(o.flow for o in offered)
    ends: dict[str, tuple[str, str]] = {}
    for o in offered:
        ends.setdefault(o.flow, (o.source, o.destination))
    flows = tuple(Flow(name=name, source=src, destination=dst, pattern="replay",
                       rate_pps=max(counts[name] / duration_s, 1e-6))
                  for name, (src, dst) in ends.items())
    update: dict[str, Any] = {"traffic": flows}
    if faults is not None:
        update["faults"] = tuple(_fault_spec(f) for f in faults)
        update["random_faults"] = None
    return scenario.model_copy(update=update)


def _fault_spec(fault: dict[str, Any]) -> FaultSpec:
    end = fault.get("end_s")
    body = {**fault["target"], "kind": fault["kind"], "id": fault["id"],
            "at_s": fault["start_s"],
            "for_s": None if end is None else max(1e-3, end - fault["start_s"])}
    return FaultSpec.model_validate(body)


def recorded_faults(trace_dir: Path) -> list[dict[str, Any]]:
    """The faults a trace recorded (graph faults and process faults alike)."""
    manifest = read_manifest(trace_dir)
    return [{k: f[k] for k in ("id", "kind", "target", "start_s", "end_s")}
            for f in manifest.get("faults", [])]


def check_nodes(offered: list[Offered], node_ids: set[str], origin: str) -> None:
    """Every replayed source and destination must exist in the target scenario."""
    missing = sorted({n for o in offered for n in (o.source, o.destination)} - node_ids)
    if missing:
        raise ScenarioError(f"{origin}: the replayed traffic names nodes the scenario does not "
                            f"have: {missing[:10]}{' ...' if len(missing) > 10 else ''}")


def write_replay(run_dir: Path, scenario: Scenario, offered: list[Offered]) -> None:
    """Write the scenario as run and the frames to replay into a run directory."""
    body = scenario.model_dump(mode="json", exclude_none=True, exclude={"source"})
    (run_dir / "scenario.yaml").write_text(
        "# written by `orbitmesh replay`: the target scenario with replayed traffic\n"
        + yaml.safe_dump(body, sort_keys=False))
    with (run_dir / REPLAY_FILE).open("wb") as fh:
        packer = msgpack.Packer(use_bin_type=True)
        for o in sorted(offered, key=lambda o: o.t_s):
            fh.write(packer.pack([o.t_s, o.flow, o.source, o.destination, o.size]))
