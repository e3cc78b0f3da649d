"""The HTML report: parses, is self-contained, holds a Recall@K chart per slice and the ANN frontier."""

import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from towerflow.components.evaluation import report as R

SVG_NS = "{http://www.w3.org/2000/svg}"


class _Collector(HTMLParser):
    VOID = {"meta", "br", "img", "input", "link", "hr", "circle", "line", "rect", "polyline", "polygon"}

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.errors, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _report(metrics_all, n=10):
    slices = {"all": n, "warm": n - 3, "cold": 3, "gender=F": 4, "gender=M": 6, "age=25-34": n}
    ks = (1, 2, 5, 10)
    return {
        "ks": [5, 10],
        "n_users": slices,
        "metrics": {
            s: {f"{m}@{k}": metrics_all * k / 10 for k in ks for m in ("recall", "hit_rate", "ndcg", "map")}
            for s in slices
        },
        "beyond_accuracy": {"coverage@10": 0.5, "gini@10": 0.7, "avg_popularity@10": 12.0, "diversity@10": None},
    }


@pytest.fixture
def result():
    points = [
        {
            "leaves_to_search": leaves,
            "reorder": pool,
            "recall": min(1.0, 0.5 + 0.04 * leaves + pool / 200),
            "p50_ms": 0.01 * leaves + pool / 1000,
            "p99_ms": 0.1,
        }
        for leaves in (1, 2, 4)
        for pool in (10, 50)
    ]
    return {
        "blessed": False,
        "reasons": ["two_tower recall@10 = 0.1 <does not> beat popularity & co"],
        "checks": [
            {"model": "two_tower", "metric": "recall@10", "against": "popularity", "value": 0.1, "reference": 0.2}
            | {"op": ">", "bound": 0.2, "passed": False}
        ],
        "gate_description": "guarded",
        "models": {"two_tower": "/m/1", "ranker": None},
        "data": {"test_users": 10},
        "ks": [5, 10],
        "curve_ks": [1, 2, 5, 10],
        "reports": {"popularity": _report(0.2), "two_tower": _report(0.1)},
        "baseline_reports": {"two_tower": _report(0.3)},
        "ann": {
            "k": 10,
            "num_items": 100,
            "num_queries": 20,
            "num_leaves": 4,
            "points": points,
            "frontier": [0, 2, 4],
            "brute_force": {"p50_ms": 0.2, "p99_ms": 0.3},
            "served": {"recall": 0.95, "p50_ms": 0.05, "p99_ms": 0.1, "mode": "ah"},
            "source": "served index",
        },
        "created": "2026-01-01T00:00:00+00:00",
    }


def test_report_parses_and_is_self_contained(result):
    page = R.render_html(result)
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], parser.stack
    tags = [t for t, _ in parser.tags]
    assert tags.count("svg") == len(R.slice_names(result)) + 1  # one Recall@K chart per slice + the frontier
    # nothing is fetched: no scripts, stylesheets, images or remote URLs
    assert not {"script", "link", "img", "iframe"} & set(tags)
    assert not re.search(r"(src|href)=\"https?:", page)
    assert "NOT BLESSED" in page and "&lt;does not&gt; beat popularity &amp; co" in page


def test_every_slice_has_a_recall_curve_with_every_model(result):
    page = R.render_html(result)
    assert R.slice_names(result) == ["all", "warm", "cold", "age=25-34", "gender=F", "gender=M"]
    assert sorted(["age=unknown", "age=56+", "age=<18", "age=18-24"], key=R._slice_order) == [
        "age=<18",
        "age=18-24",
        "age=56+",
        "age=unknown",
    ]
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    curves = {}
    for svg in svgs:
        root = ET.fromstring(svg)  # each chart is well-formed XML on its own
        title = root.find(f"{SVG_NS}text").text
        curves[title] = root
    for name in R.slice_names(result):
        [title] = [t for t in curves if t.startswith(f"Recall@K: {name} (")]
        series = {g.get("data-series"): g for g in curves[title].iter(f"{SVG_NS}g")}
        assert set(series) == {"popularity", "two_tower", "baseline:two_tower"}
        assert len(series["two_tower"].findall(f"{SVG_NS}circle")) == 4  # K = 1, 2, 5, 10
        assert series["baseline:two_tower"].find(f"{SVG_NS}polyline").get("stroke-dasharray")
        assert f'id="slice-{name}"' in page


def test_frontier_chart(result):
    svg = R.ann_frontier_svg(result["ann"])
    root = ET.fromstring(svg)
    names = [g.get("data-series") for g in root.iter(f"{SVG_NS}g")]
    assert names == ["re-order 10", "re-order 50", "Pareto frontier", "numpy brute force", "served index"]
    assert root.find(f".//{SVG_NS}polygon") is not None  # the served point is a star


def test_line_chart_skips_bad_points_and_handles_one_point():
    svg = R.line_chart_svg(
        [{"name": "a", "points": [(1, 0.5), (2, float("nan")), (0, 0.3), (4, None)]}], "t", "x", "y", log_x=True
    )
    root = ET.fromstring(svg)
    assert len(root.findall(f".//{SVG_NS}circle")) == 1
    for el in root.iter():
        for key in ("x", "y", "cx", "cy"):
            if key in el.attrib:
                assert math.isfinite(float(el.attrib[key]))


def test_summary_lines(result):
    text = R.format_summary(result)
    assert text.splitlines()[0] == "Model NOT blessed"
    assert "baseline:two_tower" in text and "recall@100" in text
