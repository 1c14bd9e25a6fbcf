"""The fidelity verdict: did a live run keep the timing of the network it models?

Every figure is in scenario milliseconds. A run fails its budget (``ok: false``, exit 1) when the
p99 hop excess, the p99 link-apply lateness or a worker's start-up lag passes the scenario's
``fidelity`` budget; the live progress line warns as soon as a worker reports lateness past it.
"""

from __future__ import annotations

from typing import Any

from orbitmesh.core.histogram import Histogram
from orbitmesh.core.scenario import Fidelity

ADVICE = "lower --speed, add workers, or place more nodes per container"


def verdict(budget: Fidelity, hop_excess: Histogram, link_apply: Histogram,
            start_late_ms: list[float], *, speed: float) -> dict[str, Any]:
    """The ``fidelity`` block of summary.json."""
    excess = hop_excess.summary((50, 99))
    apply = link_apply.summary((50, 99))
    start = round(max(start_late_ms, default=0.0), 3)
    problems = []
    if excess["p99"] is not None and float(excess["p99"]) > budget.budget_ms:
        problems.append(f"hop excess p99 {excess['p99']:g} ms > budget {budget.budget_ms:g} ms")
    if apply["p99"] is not None and float(apply["p99"]) > budget.link_apply_budget_ms:
        problems.append(f"link-apply lateness p99 {apply['p99']:g} ms > budget "
                        f"{budget.link_apply_budget_ms:g} ms")
    if start > budget.startup_budget_ms:
        problems.append(f"start-up lag {start:g} ms > budget {budget.startup_budget_ms:g} ms")
    return {"ok": not problems, "problems": problems, "unit": "scenario ms",
            "budget_ms": budget.budget_ms, "link_apply_budget_ms": budget.link_apply_budget_ms,
            "startup_budget_ms": budget.startup_budget_ms,
            "hop_excess_ms": excess, "link_apply_late_ms": apply, "startup_late_ms": start,
            "hop_excess_wall_ms": {k: (None if v is None else round(float(v) / speed, 3))
                                   for k, v in excess.items() if k != "samples"}}


def verdict_line(fidelity: dict[str, Any]) -> str:
    """The last line of the printed summary."""
    e = fidelity["hop_excess_ms"]
    figures = (f"hop excess p50 {_ms(e['p50'])} / p99 {_ms(e['p99'])} ms scenario "
               f"(wall p99 {_ms(fidelity['hop_excess_wall_ms']['p99'])} ms), link apply p99 "
               f"{_ms(fidelity['link_apply_late_ms']['p99'])} ms, start-up lag "
               f"{_ms(fidelity['startup_late_ms'])} ms")
    if fidelity["ok"]:
        return f"fidelity: ok (budget {fidelity['budget_ms']:g} ms): {figures}"
    return (f"FIDELITY BUDGET BROKEN: {'; '.join(fidelity['problems'])} — {ADVICE}. "
            f"({figures})")


def behind_warning(late_ms: float, budget: Fidelity) -> str | None:
    """A live warning when a worker reports lateness past the budget, else None."""
    if late_ms <= budget.budget_ms:
        return None
    return f"behind real time by {late_ms:.1f} ms (scenario) — {ADVICE}"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"
