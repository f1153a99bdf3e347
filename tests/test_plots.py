"""Figures that cannot mislead: every legend entry has the colour of its traces in every panel, classes and scores
keep one fixed colour across figures, and metrics sit at the epochs they were measured."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from jbot.anomaly.detect import AnomalyResult
from jbot.anomaly.report import distributions_figure, roc_figure, sic_figure, write_report
from jbot.plots import CLASS_COLOURS, SCORE_COLOURS, data_distributions, embedding_map, learning_curves, roc_curves

CLASSES = ("q", "g", "W", "Z", "t")
SCORES = ("knn", "cosine", "mahalanobis", "gmm")


def trace_colour(trace: go.BaseTraceType) -> str:
    line = getattr(trace, "line", None)
    found = (line.color if line is not None else None) or trace.marker.color
    assert isinstance(found, str), f"trace {trace.name!r} has no fixed colour"
    return found


def colours_by_group(fig: go.Figure) -> dict[str, set[str]]:
    """Legend group (or name) -> the colours of all its traces, checking each group has one legend entry."""
    groups: dict[str, set[str]] = defaultdict(set)
    shown: dict[str, int] = defaultdict(int)
    for trace in fig.data:
        key = trace.legendgroup or trace.name
        groups[key].add(trace_colour(trace))
        shown[key] += trace.showlegend is not False
    assert all(n == 1 for n in shown.values()), f"each group needs exactly one legend entry: {dict(shown)}"
    return groups


def assert_legend_matches(fig: go.Figure, palette: dict[str, str] | None = None) -> None:
    for key, colours in colours_by_group(fig).items():
        assert len(colours) == 1, f"{key!r} is drawn in {colours} across panels"
        if palette is not None:
            assert colours == {palette[key.lower()]}, f"{key!r} is {colours}, not its fixed colour"
    names = [t.name for t in fig.data if t.showlegend is not False]
    colours = [trace_colour(t) for t in fig.data if t.showlegend is not False]
    assert len(set(colours)) == len(names), f"two legend entries share a colour: {dict(zip(names, colours, strict=True))}"


@pytest.fixture(scope="module")
def result() -> AnomalyResult:
    rng = np.random.default_rng(0)
    origin = np.repeat(np.arange(5), 80)
    scores = {s: rng.normal(origin * (i + 1) * 0.1, 1.0) for i, s in enumerate(SCORES)}
    metrics = {f"{s}/{c}/{m}": 0.5 for s in SCORES for c in ("W", "Z", "t", "combined") for m in ("auc", "auc_std")}
    return AnomalyResult(metrics, scores, origin, rng.normal(size=(len(origin), 8)), 100)


def test_anomaly_report_figures_have_fixed_matching_colours(result: AnomalyResult) -> None:
    roc = roc_figure(result, tuned="gmm")
    # 4 scores x 4 panels (more traces than plotly's 10-colour cycle) and the random classifier in each panel
    assert len(roc.data) == 20 and sum(t.legendgroup == "random" for t in roc.data) == 4
    groups = {k: c for k, c in colours_by_group(roc).items() if k != "random"}
    assert {k: c.pop() for k, c in groups.items()} == {s: SCORE_COLOURS[s] for s in SCORES}
    tuned = [t for t in roc.data if t.legendgroup == "gmm"]
    assert all(t.line.width == 4 for t in tuned) and tuned[0].name == "gmm (tuned)"
    sic = sic_figure(result, tuned="gmm")  # the SIC panels share the ROC's fixed score colours and legend
    assert {k: c.pop() for k, c in colours_by_group(sic).items() if k != "random"} == {
        s: SCORE_COLOURS[s] for s in SCORES}
    assert sum(t.legendgroup == "random" for t in sic.data) == 4 and sic.layout.yaxis.title.text.startswith("SIC")
    hist = distributions_figure(result)
    assert len(hist.data) == 20
    assert_legend_matches(hist, CLASS_COLOURS)
    assert all(hist.layout[f"xaxis{'' if i == 1 else i}"].title.text for i in range(1, 5)), "axis titles"


def test_every_class_figure_uses_the_same_class_colours(result: AnomalyResult) -> None:
    rng = np.random.default_rng(1)
    per_class = {c: {"mass": rng.normal(size=50), "pt": rng.normal(size=50), "multiplicity": rng.integers(5, 30, 50)}
                 for c in ("q", "g", "w", "z", "t")}
    assert_legend_matches(data_distributions(per_class, "jets"), CLASS_COLOURS)
    y = np.repeat(np.arange(5), 40)
    probs = rng.dirichlet(np.ones(5), size=len(y))
    assert_legend_matches(roc_curves(y, probs, CLASSES), CLASS_COLOURS)
    assert_legend_matches(embedding_map(rng.normal(size=(len(y), 8)), y, CLASSES, "map", max_points=200),
                          CLASS_COLOURS)
    assert CLASS_COLOURS["g"] != CLASS_COLOURS["t"] and len(set(CLASS_COLOURS.values())) == 5


def test_learning_curves_put_metrics_at_their_epochs() -> None:
    history = {"train/loss": [3.0, 2.5, 2.2, 2.0], "train/loss_cls": [1.0, 0.9, 0.8, 0.7], "diag/lr": [1e-4, 2e-4,
               2e-4, 2e-4], "diag/teacher_momentum": [0.996, 0.997, 0.998, 0.999], "val/knn_acc": [0.41, 0.47]}
    fig = learning_curves(history, "curves", {"val/knn_acc": [2, 4]})
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["val/knn_acc"].x) == [2, 4] and list(by_name["train/loss"].x) == [1, 2, 3, 4]
    lr_axis = by_name["diag/lr"].yaxis.replace("y", "yaxis")
    assert fig.layout[lr_axis].type == "log", "the learning rate has its own log axis"
    assert by_name["train/loss"].yaxis != by_name["diag/lr"].yaxis != by_name["val/knn_acc"].yaxis
    assert fig.layout.title.text == "curves"
    assert_legend_matches(fig)
    every = ["train/loss", "train/loss_part", "train/loss_cls", "train/loss_koleo", "diag/teacher_entropy",
             "diag/student_entropy", "diag/masked_fraction", "diag/center_norm_cls", "diag/center_norm_part",
             "diag/lr", "diag/teacher_momentum", "val/knn_acc"]  # what pre-training plots: 12 distinct colours
    assert_legend_matches(learning_curves({k: [1.0, 2.0] for k in every}, "all"))


def test_report_marks_the_tuned_score_and_tables_its_settings(result: AnomalyResult, tmp_path: Path) -> None:
    paths = write_report(result, tmp_path, {"model": "x.pt"}, [], {"anomaly.score": "gmm", "anomaly.knn_k": 58},
                         tuned="gmm")
    text = paths["report"].read_text()
    assert "Settings (tuned: gmm)" in text and "<td>anomaly.knn_k</td><td>58</td>" in text
    assert "gmm (tuned)" in text and "{'anomaly" not in text, "settings are a table, not a Python dict"
