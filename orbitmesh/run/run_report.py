"""`orbitmesh report RUN`: one self-contained HTML page of plots (and PNGs for papers), and the
side-by-side page of `orbitmesh compare A B --html`.

The page holds every figure as a base64 PNG ``data:`` URI and its own inline style: it names no
external URL of any kind, so it renders the same offline, mailed, or years later. (Not SVG:
matplotlib's SVG declares its XML namespace with an ``http://`` URI, and a shell-1 scatter as
SVG runs to tens of megabytes.)
"""

from __future__ import annotations

import base64
import html
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orbitmesh.run.files import atomic_write
from orbitmesh.run.progress import progress
from orbitmesh.run.report_data import RunData, read_run

PNG_DPI = 110
_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}
figure{margin:1.2em 0}figcaption{font-weight:bold;margin-bottom:.3em}
img{max-width:100%}table.side td{vertical-align:top;width:50%}
.warn{color:#a40}"""


def render_figures(data: RunData, png_dir: Path | None = None,
                   on_figure: Callable[[int], None] | None = None
                   ) -> list[tuple[str, str, bytes]]:
    """Draw every figure of :data:`FIGURES` as PNG bytes: ``(id, caption, png)`` in page order.

    With ``png_dir`` each is also written there as ``<id>.png``.
    """
    import matplotlib.pyplot as plt

    from orbitmesh.run.report_figures import FIGURES

    out = []
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
    for i, (fig_id, caption, draw) in enumerate(FIGURES):
        fig = draw(data)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=PNG_DPI)
        plt.close(fig)
        png = buf.getvalue()
        if png_dir is not None:
            atomic_write(png_dir / f"{fig_id}.png", png)
        out.append((fig_id, caption, png))
        if on_figure is not None:
            on_figure(i + 1)
    return out


def _img(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def _summary_text(data: RunData) -> str:
    from orbitmesh.run.report import format_summary

    if not data.summary:
        return "(no summary.json: the run has not finished, or it ended before writing one)"
    try:
        return format_summary(data.summary)
    except (KeyError, TypeError, ValueError) as exc:  # an older summary: say so, keep the plots
        return f"(summary.json could not be tabulated: {exc!r})"


def _warnings(data: RunData) -> str:
    lines = [*data.warnings, *(f"trace damage skipped: {d.describe()}" for d in data.damage)]
    return "".join(f'<p class="warn">{html.escape(w)}</p>' for w in lines)


def _title(data: RunData) -> str:
    m = data.manifest
    return (f"run {m.get('run_id')}: scenario {m.get('scenario')}, "
            f"{float(m.get('duration_s') or 0):g} s from {m.get('epoch')} at x{m.get('speed')}")


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


def report_html(data: RunData, figures: list[tuple[str, str, bytes]]) -> str:
    """The report page of one run."""
    title = _title(data)
    body = [f"<h1>{html.escape(title)}</h1>", _warnings(data),
            f"<pre>{html.escape(_summary_text(data))}</pre>"]
    for fig_id, caption, png in figures:
        body.append(f'<figure id="fig-{fig_id}"><figcaption>{html.escape(caption)}</figcaption>'
                    f"{_img(png, caption)}</figure>")
    return _page(title, "\n".join(body))


def compare_html(result: dict[str, Any], a: tuple[RunData, list[tuple[str, str, bytes]]],
                 b: tuple[RunData, list[tuple[str, str, bytes]]]) -> str:
    """Two runs side by side: the comparison table, then each figure of A beside B's."""
    from orbitmesh.run.compare import format_comparison

    title = f"compare {a[0].manifest.get('run_id')} (A) with {b[0].manifest.get('run_id')} (B)"
    body = [f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(format_comparison(result))}"
            "</pre>", '<table class="side"><tr>'
            f"<th>A: {html.escape(_title(a[0]))}</th><th>B: {html.escape(_title(b[0]))}</th></tr>"
            f"<tr><td>{_warnings(a[0])}</td><td>{_warnings(b[0])}</td></tr>"]
    for (fig_id, caption, png_a), (_, _, png_b) in zip(a[1], b[1], strict=True):
        body.append(f'<tr id="fig-{fig_id}"><td colspan="2"><b>{html.escape(caption)}</b></td>'
                    f"</tr><tr><td>{_img(png_a, 'A: ' + caption)}</td>"
                    f"<td>{_img(png_b, 'B: ' + caption)}</td></tr>")
    body.append("</table>")
    return _page(title, "\n".join(body))


def _read_with_progress(run: Path, label: str, salvage: bool
                        ) -> tuple[RunData, list[tuple[str, str, bytes]]]:
    from orbitmesh.run.report_figures import FIGURES

    with progress(f"{label}: reading events (records)") as report:
        data = read_run(run, salvage=salvage, on_progress=report)
    with progress(f"{label}: drawing figures", len(FIGURES)) as report:
        figures = render_figures(data, on_figure=report)
    return data, figures


def write_report(run: Path, out: Path, png_dir: Path | None = None, *,
                 salvage: bool = False) -> tuple[RunData, float]:
    """Write the report of ``run`` to ``out`` (and PNGs to ``png_dir``); returns data, seconds."""
    from orbitmesh.run.report_figures import FIGURES

    started = time.perf_counter()
    with progress("reading events (records)") as report:
        data = read_run(run, salvage=salvage, on_progress=report)
    with progress("drawing figures", len(FIGURES)) as report:
        figures = render_figures(data, png_dir, on_figure=report)
    atomic_write(out, report_html(data, figures))
    return data, time.perf_counter() - started


def resolve_run(text: str) -> Path:
    """A run directory from a path or a bare run id (``runs/<id>``, as `status`/`down` take)."""
    path = Path(text)
    if path.is_dir() or path.exists():
        return path
    candidate = Path("runs") / text
    return candidate if candidate.is_dir() else path


def report_cli(run_text: str, out: str | None, png_dir: str | None, salvage: bool) -> int:
    """`orbitmesh report`: exit 0, or 2 on a missing or damaged trace."""
    from orbitmesh.errors import OrbitmeshError

    run = resolve_run(run_text)
    target = Path(out) if out else run / "report.html"
    try:
        data, seconds = write_report(run, target, Path(png_dir) if png_dir else None,
                                     salvage=salvage)
    except OrbitmeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in data.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for d in data.damage:
        print(f"warning: salvaged: {d.describe()}", file=sys.stderr)
    print(f"report: {target} ({len(data.deliver_t_s)} deliveries, {len(data.offer_t_s)} offers, "
          f"{len(data.drop_t_s)} drops, {len(data.tick_t_s)} ticks; {seconds:.1f} s)"
          + (f"; figures in {png_dir}" if png_dir else ""), file=sys.stderr)
    return 0


def compare_html_cli(run_a: Path, run_b: Path, out: Path) -> None:
    """Write the side-by-side page of two runs (raises OrbitmeshError on bad input)."""
    from orbitmesh.run.compare import compare_runs

    result = compare_runs(run_a, run_b)
    a = _read_with_progress(run_a, "A", False)
    b = _read_with_progress(run_b, "B", False)
    atomic_write(out, compare_html(result, a, b))
