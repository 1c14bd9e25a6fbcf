"""Compare two runs' summaries flow by flow: ``orbitmesh compare A B``.

Flows are matched by name. For each flow both runs' delivery ratio and latency percentiles
(p50/p95/p99) stand side by side with B - A, absolute and in % of A. Thresholds turn the
comparison into a regression check (docs/traces.md, "Compare"):

* delivery drop: how many **percentage points** B's delivery ratio is below A's
  (A 0.990, B 0.950 is a drop of 4.0 points);
* latency increase: how many **% of A's value** B's p50 or B's p95 is above A's. Both are
  checked, p99 is not (a tail of a few frames is too noisy to gate on).

A flow that only run A has is a violation when any threshold is given (B cannot show it did not
regress); a flow only B has is listed and not judged. Exit codes of the command: 0 pass,
1 a threshold crossed, 2 bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

from orbitmesh.errors import OrbitmeshError, RunError
from orbitmesh.run.report import read_summary

PERCENTILES = ("p50", "p95", "p99")
GATED_PERCENTILES = ("p50", "p95")
EXIT_PASS, EXIT_THRESHOLD, EXIT_BAD_INPUT = 0, 1, 2


def _summary_path(run: Path) -> Path:
    run = Path(run)
    return run / "summary.json" if run.is_dir() else run


def _load(run: Path) -> dict[str, Any]:
    path = _summary_path(run)
    if not path.is_file():
        raise RunError(f"{run}: no summary.json (give a finished run directory or its "
                       "summary.json; a run still in progress has none yet)")
    try:
        summary = read_summary(path)
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise RunError(f"{path}: not a readable summary.json: {exc}") from exc
    if not isinstance(summary.get("flows"), list):
        raise RunError(f"{path}: no 'flows' list; is this an orbitmesh summary.json?")
    return summary


def _side(flow: dict[str, Any]) -> dict[str, Any]:
    latency = flow.get("latency_ms") or {}
    return {"offered": flow.get("offered"), "delivered": flow.get("delivered"),
            "delivery_ratio": flow.get("delivery_ratio"),
            **{p: latency.get(p) for p in PERCENTILES}}


def _diff(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
    return None if a is None or b is None else round((b - a) * scale, 6)


def _pct(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else round((b - a) / a * 100.0, 3)


def compare_runs(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Both runs' per-flow delivery ratio and latency p50/p95/p99 side by side, with B - A."""
    sa, sb = _load(run_a), _load(run_b)
    flows_a = {f["name"]: f for f in sa["flows"]}
    flows_b = {f["name"]: f for f in sb["flows"]}
    flows = []
    for name, fa in flows_a.items():
        if name not in flows_b:
            continue
        a, b = _side(fa), _side(flows_b[name])
        delta: dict[str, float | None] = {
            "delivery_ratio_pp": _diff(a["delivery_ratio"], b["delivery_ratio"], 100.0)}
        for p in PERCENTILES:
            delta[f"{p}_ms"] = _diff(a[p], b[p])
            delta[f"{p}_pct"] = _pct(a[p], b[p])
        flows.append({"name": name, "a": a, "b": b, "delta": delta})

    def run_info(run: Path, s: dict[str, Any]) -> dict[str, Any]:
        meta = s.get("run", {})
        return {"path": str(run), "run_id": meta.get("id"), "scenario": meta.get("scenario"),
                "duration_s": meta.get("duration_s"), "speed": meta.get("speed")}

    return {"a": run_info(run_a, sa), "b": run_info(run_b, sb), "flows": flows,
            "only_a": [n for n in flows_a if n not in flows_b],
            "only_b": [n for n in flows_b if n not in flows_a]}


def check_thresholds(result: dict[str, Any], max_latency_increase_pct: float | None,
                     max_delivery_drop_pct: float | None) -> list[str]:
    """Violations of the thresholds, one line each (empty: the comparison passes)."""
    if max_latency_increase_pct is None and max_delivery_drop_pct is None:
        return []
    out = [f"flow {name}: in run A but not in run B" for name in result["only_a"]]
    for f in result["flows"]:
        a, b, d = f["a"], f["b"], f["delta"]
        drop = d["delivery_ratio_pp"]
        if max_delivery_drop_pct is not None and drop is not None \
                and -drop > max_delivery_drop_pct:
            out.append(f"flow {f['name']}: delivery ratio {a['delivery_ratio']:.4f} -> "
                       f"{b['delivery_ratio']:.4f}, down {-drop:.2f} points "
                       f"(limit {max_delivery_drop_pct:g})")
        if max_latency_increase_pct is None:
            continue
        for p in GATED_PERCENTILES:
            pct = d[f"{p}_pct"]
            if pct is not None and pct > max_latency_increase_pct:
                out.append(f"flow {f['name']}: latency {p} {a[p]:.3f} -> {b[p]:.3f} ms, "
                           f"up {pct:.1f}% (limit {max_latency_increase_pct:g}%)")
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a table: per flow, A, B and B - A for ratio and each percentile."""
    a, b = result["a"], result["b"]
    out = [f"A: {a['path']} (run {a['run_id']}, scenario {a['scenario']})",
           f"B: {b['path']} (run {b['run_id']}, scenario {b['scenario']})",
           f"{'flow':<22}{'metric':<10}{'A':>11}{'B':>11}{'B-A':>11}{'B-A %':>9}"]
    for f in result["flows"]:
        fa, fb, d = f["a"], f["b"], f["delta"]
        out.append(f"{f['name']:<22}{'delivery':<10}{_fmt(fa['delivery_ratio'], '.4f'):>11}"
                   f"{_fmt(fb['delivery_ratio'], '.4f'):>11}"
                   f"{_fmt(d['delivery_ratio_pp'], '+.2f') + ' pp':>11}{'':>9}")
        for p in PERCENTILES:
            out.append(f"{'':<22}{p + ' ms':<10}{_fmt(fa[p], '.3f'):>11}{_fmt(fb[p], '.3f'):>11}"
                       f"{_fmt(d[f'{p}_ms'], '+.3f'):>11}{_fmt(d[f'{p}_pct'], '+.1f'):>9}")
    if not result["flows"]:
        out.append("(no flow is in both runs)")
    if result["only_a"]:
        out.append("only in A: " + ", ".join(result["only_a"]))
    if result["only_b"]:
        out.append("only in B: " + ", ".join(result["only_b"]))
    return "\n".join(out)


def run_compare(run_a: Path, run_b: Path, *, max_latency_increase_pct: float | None = None,
                max_delivery_drop_pct: float | None = None, as_json: bool = False,
                out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """`orbitmesh compare`: print the comparison and violations; exit code 0, 1 or 2."""
    out = out or sys.stdout
    err = err or sys.stderr
    for name, value in (("--max-latency-increase-pct", max_latency_increase_pct),
                        ("--max-delivery-drop-pct", max_delivery_drop_pct)):
        if value is not None and not value >= 0:
            print(f"error: {name} must be a number >= 0, got {value}", file=err)
            return EXIT_BAD_INPUT
    try:
        result = compare_runs(run_a, run_b)
    except OrbitmeshError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    violations = check_thresholds(result, max_latency_increase_pct, max_delivery_drop_pct)
    if as_json:
        print(json.dumps({**result, "violations": violations}, indent=2), file=out)
    else:
        print(format_comparison(result), file=out)
        for v in violations:
            print(f"THRESHOLD: {v}", file=out)
        if max_latency_increase_pct is not None or max_delivery_drop_pct is not None:
            print("thresholds: " + ("FAILED" if violations else "pass"), file=out)
    return EXIT_THRESHOLD if violations else EXIT_PASS
