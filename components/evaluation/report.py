"""The ModelEvaluator's self-contained HTML report, with hand-written inline SVG charts.

`render_html(result)` turns the evaluation result (the dict ModelEvaluator writes
as `model_evaluation.json`, see components/evaluation/model_evaluator.py) into
one HTML page with no external resources: the verdict and its reasons, the
guarded checks, a headline table per model, the non-neural baselines with the
settings the eval window chose, every model against the best baseline (and
the last blessed model) with paired bootstrap 95% CIs and p-values for all,
warm and cold users, Recall@K curves per slice (one line per model, the
baseline's dashed), beyond-accuracy metrics, every metric of every slice, and
the ANN recall-vs-latency frontier of a ScaNN sweep.
`format_summary(result)` is the few lines `towerflow report` prints.

No plotting library: the charts are small SVG documents built from strings.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
BASELINE_PREFIX = "baseline:"
HEADLINE = ("recall@10", "recall@100", "ndcg@10", "hit_rate@10", "map@10")


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _esc(value)


# --------------------------------------------------------------------------- SVG


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def line_chart_svg(
    series: Sequence[dict],
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    y_range: tuple[float, float] | None = None,
    width: int = 460,
    height: int = 280,
) -> str:
    """An inline SVG line chart.

    Each series is {"name", "points": [(x, y), ...], "color"?, "dashed"?, "markers_only"?,
    "marker"? ("circle" | "star")}. Points with a None/NaN coordinate are skipped; `log_x`
    needs positive x. Every point carries a <title> tooltip.
    """
    left, right, top, bottom = 52, 150, 28, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    pts = [
        (x, y)
        for s in series
        for x, y in s["points"]
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)
    ]
    xs = [x for x, _ in pts] or [1.0]
    ys = [y for _, y in pts] or [0.0]

    def fx(v: float) -> float:
        return math.log10(v) if log_x else v

    x_lo, x_hi = fx(min(xs)), fx(max(xs))
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_range:
        y_lo, y_hi = y_range
    else:
        y_lo, y_hi = 0.0, max(ys) * 1.1 if max(ys) > 0 else 1.0
    y_ticks = _ticks(y_lo, y_hi)
    y_hi = max(y_hi, y_ticks[-1])

    def px(v: float) -> float:
        return left + (fx(v) - x_lo) / (x_hi - x_lo) * plot_w

    def py(v: float) -> float:
        return top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{left}" y="16" class="title">{_esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for t in y_ticks:
        if y_lo <= t <= y_hi:
            y = py(t)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="tick">{t:g}</text>')
    if log_x:
        x_ticks = [10**e for e in range(math.floor(x_lo), math.ceil(x_hi) + 1) if x_lo - 1e-9 <= e <= x_hi + 1e-9]
        x_ticks = sorted(set(x_ticks) | ({min(xs), max(xs)} if len(x_ticks) < 2 else set()))
        if len(set(xs)) <= 8:
            x_ticks = sorted(set(xs))
    else:
        x_ticks = sorted(set(xs)) if len(set(xs)) <= 8 else _ticks(x_lo, x_hi)
    for t in x_ticks:
        x = px(t)
        if left - 1 <= x <= left + plot_w + 1:
            out.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#999"/>')
            out.append(f'<text x="{x:.1f}" y="{top + plot_h + 15}" text-anchor="middle" class="tick">{t:g}</text>')
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" class="label">{_esc(x_label)}</text>'
    )
    out.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" class="label" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{_esc(y_label)}</text>'
    )
    for i, s in enumerate(series):
        color = s.get("color") or PALETTE[i % len(PALETTE)]
        points = [
            (x, y)
            for x, y in s["points"]
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)
        ]
        name = _esc(s["name"])
        out.append(f'<g class="series" data-series="{name}">')
        if len(points) > 1 and not s.get("markers_only"):
            dash = ' stroke-dasharray="5 3"' if s.get("dashed") else ""
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>')
        for x, y in points:
            tip = f"<title>{name}: ({x:g}, {y:.4f})</title>"
            if s.get("marker") == "star":
                cx, cy = px(x), py(y)
                star = " ".join(
                    f"{cx + r * math.sin(a):.1f},{cy - r * math.cos(a):.1f}"
                    for j in range(10)
                    for a, r in [(j * math.pi / 5, 7 if j % 2 == 0 else 3)]
                )
                out.append(f'<polygon points="{star}" fill="{color}">{tip}</polygon>')
            else:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{color}">{tip}</circle>')
        out.append("</g>")
        ly = top + 10 + 15 * i
        lx = left + plot_w + 10
        dash = ' stroke-dasharray="5 3"' if s.get("dashed") else ""
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 18}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 22}" y="{ly + 4}" class="legend">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- sections


def _all_reports(result: dict) -> dict[str, dict]:
    """Model name -> report dict; the baseline's models are prefixed "baseline:"."""
    reports = dict(result.get("reports", {}))
    for name, report in (result.get("baseline_reports") or {}).items():
        reports[BASELINE_PREFIX + name] = report
    return reports


def _colors(names: Sequence[str]) -> dict[str, str]:
    base = [n for n in names if not n.startswith(BASELINE_PREFIX)]
    colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(base)}
    for n in names:
        if n.startswith(BASELINE_PREFIX):
            colors[n] = colors.get(n[len(BASELINE_PREFIX) :], PALETTE[len(colors) % len(PALETTE)])
    return colors


def slice_names(result: dict) -> list[str]:
    """Every slice of the candidate's reports, all/warm/cold first."""
    names: list[str] = []
    for report in result.get("reports", {}).values():
        for name in report["metrics"]:
            if name not in names:
                names.append(name)
    first = [n for n in ("all", "warm", "cold") if n in names]
    return first + sorted((n for n in names if n not in first), key=_slice_order)


def _slice_order(name: str) -> tuple:
    """ "age=<18" < "age=18-24" < ... < "age=56+" < "age=unknown"; other labels alphabetically."""
    group, _, value = name.partition("=")
    number = re.search(r"\d+", value)
    rank = -1.0 if value.startswith("<") else float(number.group()) if number else math.inf
    return group, rank, value


def recall_curves_svg(result: dict, slice_name: str, metric: str = "recall") -> str:
    reports = _all_reports(result)
    colors = _colors(list(reports))
    ks = result.get("curve_ks") or result.get("ks") or []
    series = []
    for name, report in reports.items():
        values = report["metrics"].get(slice_name)
        if values is None:
            continue
        points = [(k, values.get(f"{metric}@{k}")) for k in ks]
        series.append(
            {"name": name, "points": points, "color": colors[name], "dashed": name.startswith(BASELINE_PREFIX)}
        )
    users = next((r["n_users"].get(slice_name) for r in reports.values() if slice_name in r["n_users"]), "?")
    return line_chart_svg(
        series, f"{metric.replace('_', ' ').title()}@K: {slice_name} ({users} users)", "K", f"{metric}@K", log_x=True
    )


def ann_frontier_svg(ann: dict) -> str:
    """Recall@k vs single-query p50 latency: one line per re-order pool across leaves searched."""
    k = ann["k"]
    pools = sorted({p["reorder"] for p in ann["points"]})
    series = []
    for i, pool in enumerate(pools):
        points = sorted((p["p50_ms"], p["recall"]) for p in ann["points"] if p["reorder"] == pool)
        series.append({"name": f"re-order {pool}", "points": points, "color": PALETTE[i % len(PALETTE)]})
    frontier = [ann["points"][i] for i in ann.get("frontier", [])]
    if frontier:
        series.append(
            {
                "name": "Pareto frontier",
                "points": sorted((p["p50_ms"], p["recall"]) for p in frontier),
                "color": "#000",
                "dashed": True,
            }
        )
    if ann.get("brute_force"):
        bf = ann["brute_force"]
        series.append({"name": "numpy brute force", "points": [(bf["p50_ms"], 1.0)], "color": "#7f7f7f"})
    if ann.get("served"):
        sv = ann["served"]
        series.append({"name": "served index", "points": [(sv["p50_ms"], sv["recall"])], "color": "#e6a800"})
        series[-1]["marker"] = "star"
    lows = [p["recall"] for p in ann["points"] if p["recall"] is not None and math.isfinite(p["recall"])]
    y_lo = max(0.0, math.floor(min(lows + [1.0]) * 10) / 10 - 0.05)
    return line_chart_svg(
        series,
        f"ScaNN recall@{k} vs latency ({ann['num_items']:,} items, {ann['num_leaves']} leaves)",
        "single-query p50 latency (ms, log)",
        f"recall@{k} vs exact",
        log_x=True,
        y_range=(y_lo, 1.0),
        width=560,
        height=320,
    )


def _table(header: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _checks_table(result: dict) -> str:
    rows = []
    for c in result.get("checks", []):
        verdict = '<span class="ok">pass</span>' if c["passed"] else '<span class="bad">FAIL</span>'
        rows.append(
            [
                _esc(c["model"]),
                _esc(c["metric"]),
                _esc(c["against"]),
                _fmt(c["value"]),
                _fmt(c["reference"]),
                f"{_esc(c['op'])} {_fmt(c['bound'])}",
                verdict,
            ]
        )
    if not rows:
        return "<p>No checks ran.</p>"
    return _table(["model", "metric", "against", "value", "reference", "needs", ""], rows)


def _pm(value, digits: int = 4, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits - 3}%}" if percent else f"{value:+.{digits}f}"


def _interval(c: dict, prefix: str, percent: bool = False) -> str:
    low, high = c.get(f"{prefix}ci_low"), c.get(f"{prefix}ci_high")
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return "–"
    return f"[{_pm(low, percent=percent)}, {_pm(high, percent=percent)}]"


def _comparison_rows(comparisons: Sequence[dict], with_verdict: bool) -> list[list[str]]:
    rows = []
    for c in comparisons:
        row = [
            _esc(c["model"]),
            _esc(c["against"]),
            _esc(f"{c.get('slice', 'all')}:{c['metric']}"),
            str(c.get("n", "")),
            _fmt(c.get("mean")),
            _fmt(c.get("reference_mean")),
            f"{_pm(c.get('difference'))} {_interval(c, '')}",
            f"{_pm(c.get('lift'), percent=True)} {_interval(c, 'lift_', percent=True)}",
            _fmt(c.get("p_value"), 3),
        ]
        if with_verdict:
            row.append('<span class="ok">pass</span>' if c["passed"] else '<span class="bad">FAIL</span>')
        rows.append(row)
    return rows


COMPARISON_HEADER = [
    "model",
    "against",
    "metric",
    "users",
    "value",
    "reference",
    "difference [95% CI]",
    "lift [95% CI]",
]


def _gate_comparisons_table(result: dict) -> str:
    comparisons = result.get("gate_comparisons") or []
    if not comparisons:
        return ""
    return _table([*COMPARISON_HEADER, "p", ""], _comparison_rows(comparisons, with_verdict=True))


def _baselines_section(result: dict) -> str:
    baselines = result.get("baselines") or {}
    if not baselines:
        return "<p>No baselines were evaluated.</p>"
    best = (result.get("best_baseline") or {}).get("name")
    columns = [(s, m) for m in ("recall@100", "ndcg@10", "hit_rate@10") for s in ("all", "warm", "cold")]
    rows = []
    for name, b in baselines.items():
        chosen = ", ".join(f"{k}: {v:.4f}" for k, v in (b.get("selection") or {}).items()) or "–"
        label = f"<b>{_esc(b.get('describe', name))}</b> (best)" if name == best else _esc(b.get("describe", name))
        values = [_fmt(b["metrics"].get(s, {}).get(m)) for s, m in columns]
        rows.append([label, *values, _esc(chosen)])
    header = ["baseline", *(f"{s} {m}" for s, m in columns), "eval-window NDCG@10 per setting"]
    notes = (
        "Settings chosen on the eval window with train-only fits, then refit on train+eval; "
        "the best baseline is the one with the highest test NDCG@10 over all users."
    )
    if best and (result.get("best_baseline") or {}).get("fallback_file"):
        notes += (
            f" The models are not blessed: {result['best_baseline']['fallback_file']} holds {best}'s ranked lists "
            "(refit on every interaction) for the service to serve instead."
        )
    comparisons = result.get("comparisons") or []
    table = _table([*COMPARISON_HEADER, "p"], _comparison_rows(comparisons, with_verdict=False))
    return (
        _table(header, rows, cls="wide")
        + f"<p>{_esc(notes)}</p>"
        + ("<h3>Paired comparisons (bootstrap 95% CI, permutation p-value)</h3>" + table if comparisons else "")
    )


def _headline_table(result: dict) -> str:
    reports = _all_reports(result)
    metrics = [m for m in HEADLINE if all(m in r["metrics"]["all"] for r in reports.values())]
    rows = []
    for name, report in reports.items():
        rows.append([_esc(name), str(report["n_users"]["all"]), *(_fmt(report["metrics"]["all"][m]) for m in metrics)])
    return _table(["model", "users", *metrics], rows)


def _beyond_table(result: dict) -> str:
    reports = _all_reports(result)
    keys: list[str] = []
    for r in reports.values():
        keys += [k for k in r.get("beyond_accuracy", {}) if k not in keys]
    rows = [[_esc(n), *(_fmt(r.get("beyond_accuracy", {}).get(k)) for k in keys)] for n, r in reports.items()]
    return _table(["model", *keys], rows)


def _slice_table(result: dict, slice_name: str) -> str:
    reports = _all_reports(result)
    ks = result.get("ks") or []
    metric_names = ("recall", "hit_rate", "ndcg", "map")
    columns = [f"{m}@{k}" for k in ks for m in metric_names]
    rows = []
    for name, report in reports.items():
        values = report["metrics"].get(slice_name)
        if values is None:
            continue
        rows.append([_esc(name), str(report["n_users"].get(slice_name, "")), *(_fmt(values.get(c)) for c in columns)])
    return _table(["model", "users", *columns], rows, cls="wide")


def _ann_section(ann: dict | None) -> str:
    if not ann:
        return "<p>No ANN sweep was run.</p>"
    rows = [
        [str(p["leaves_to_search"]), str(p["reorder"]), _fmt(p["recall"]), _fmt(p["p50_ms"], 3), _fmt(p["p99_ms"], 3)]
        for p in ann["points"]
    ]
    notes = [
        f"{ann['num_queries']:,} queries (test users' query embeddings); exact top-{ann['k']} over the same "
        f"{ann['num_items']:,} {ann.get('source', 'catalog')} embeddings is the reference. "
        f"Tree of {ann['num_leaves']} leaves + asymmetric hashing; the sweep varies leaves searched and the "
        "exactly re-scored pool at query time."
    ]
    if ann.get("brute_force"):
        notes.append(f"numpy brute force: p50 {ann['brute_force']['p50_ms']:.3f} ms.")
    if ann.get("served"):
        sv = ann["served"]
        notes.append(
            f"Served index ({sv.get('mode', '')}): recall@{ann['k']} {sv['recall']:.4f}, p50 {sv['p50_ms']:.3f} ms."
        )
    return f'<div class="charts">{ann_frontier_svg(ann)}</div><p>{" ".join(_esc(n) for n in notes)}</p>' + _table(
        ["leaves searched", "re-order pool", f"recall@{ann['k']}", "p50 ms", "p99 ms"], rows
    )


CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.wide { font-size: 11px; }
.verdict { font-size: 18px; padding: 8px 12px; display: inline-block; border-radius: 4px; }
.verdict.blessed { background: #e3f6e3; color: #145214; } .verdict.rejected { background: #fde2e2; color: #7a1010; }
.ok { color: #145214; } .bad { color: #a31515; font-weight: bold; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart text { font-size: 11px; fill: #333; } svg.chart text.title { font-size: 12px; font-weight: bold; }
svg.chart text.tick { font-size: 10px; fill: #666; }
.meta { color: #666; font-size: 12px; }
"""


def render_html(result: dict) -> str:
    """The whole report as one self-contained HTML document."""
    blessed = bool(result.get("blessed"))
    slices = slice_names(result)
    data = result.get("data", {})
    models = result.get("models", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>towerflow model evaluation</title>',
        f"<style>{CSS}</style></head><body>",
        "<h1>towerflow model evaluation</h1>",
        f'<p class="verdict {"blessed" if blessed else "rejected"}">{"BLESSED" if blessed else "NOT BLESSED"}</p>',
        "<ul>" + "".join(f"<li>{_esc(r)}</li>" for r in result.get("reasons", [])) + "</ul>",
        '<p class="meta">'
        + " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in {**models, **data}.items() if v not in (None, ""))
        + (f" · evaluated {_esc(result['created'])}" if result.get("created") else "")
        + "</p>",
        "<h2>Gate</h2>",
        f"<p>{_esc(result.get('gate_description', ''))}</p>",
        _checks_table(result),
        _gate_comparisons_table(result),
        "<h2>Headline (all test users)</h2>",
        _headline_table(result),
        "<h2>Baselines</h2>",
        _baselines_section(result),
        "<h2>Recall@K per slice</h2>",
        '<div class="charts">' + "".join(recall_curves_svg(result, s) for s in slices) + "</div>",
        "<h2>Beyond accuracy (at the largest K)</h2>",
        _beyond_table(result),
        "<h2>Every metric per slice</h2>",
    ]
    for s in slices:
        parts.append(f'<h3 id="slice-{_esc(s)}">{_esc(s)}</h3>')
        parts.append(_slice_table(result, s))
    parts += ["<h2>ANN recall vs latency</h2>", _ann_section(result.get("ann")), "</body></html>"]
    return "\n".join(parts)


def format_summary(result: dict, metrics: Sequence[str] = ("recall@100", "ndcg@10")) -> str:
    """A few lines: verdict, reasons, and the guarded metrics of every model (all users)."""
    lines = [f"Model {'BLESSED' if result.get('blessed') else 'NOT blessed'}"]
    lines += [f"  {r}" for r in result.get("reasons", [])]
    reports = _all_reports(result)
    width = max([len(n) for n in reports] + [5])
    lines.append("  " + "model".ljust(width) + "".join(f"{m:>13}" for m in metrics))
    for name, report in reports.items():
        values = report["metrics"]["all"]
        lines.append("  " + name.ljust(width) + "".join(f"{_fmt(values.get(m)):>13}" for m in metrics))
    for name, b in (result.get("baselines") or {}).items():
        if name not in reports:
            values = b["metrics"]["all"]
            lines.append("  " + name.ljust(width) + "".join(f"{_fmt(values.get(m)):>13}" for m in metrics))
    best = result.get("best_baseline")
    if best:
        lines.append(f"  best baseline: {best['describe']} ({best['metric']} {_fmt(best['value'])})")
        if best.get("fallback_file"):
            lines.append(f"  serve instead of the models: {best['fallback_file']} next to the report")
    return "\n".join(lines)
