"""plotly figures, written as self-contained HTML (plotly.js embedded: renders offline and in the MLflow UI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from jbot.io import atomic_write

# One colour per class and per anomaly score, the same in every figure and report (colour-blind-safe hues; g and t
# far apart). Names are matched case-insensitively ("w" = "W").
CLASS_COLOURS = {"q": "#0072B2", "g": "#E69F00", "w": "#009E73", "z": "#CC79A7", "t": "#404040"}
SCORE_COLOURS = {"knn": "#1B9E77", "cosine": "#D95F02", "mahalanobis": "#7570B3", "gmm": "#E7298A"}
SERIES_COLOURS = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F",
                  "#BCBD22", "#17BECF", "#222A2A", "#B68100", "#750D86", "#EB663B", "#511CFB", "#00A08B",
                  "#FB00D1", "#FC0080", "#B2828D", "#6C7C32")  # 20 distinct series (learning curves have 12)


def colour(name: str, palette: dict[str, str], index: int = 0) -> str:
    """The fixed colour of ``name`` in ``palette``; names outside it take a fixed colour by their index."""
    return palette.get(name.lower(), palette.get(name, SERIES_COLOURS[index % len(SERIES_COLOURS)]))


def write_html(fig: go.Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True))


def data_distributions(per_class: dict[str, dict[str, np.ndarray]], title: str) -> go.Figure:
    """Histograms per class of jet mass, jet pT and constituent multiplicity."""
    panels = [("mass", "jet mass [GeV]"), ("pt", "jet pT [GeV]"), ("multiplicity", "constituents")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[label for _, label in panels])
    for i, (name, arrays) in enumerate(per_class.items()):
        for col, (key, label) in enumerate(panels, start=1):
            fig.add_trace(
                go.Histogram(x=arrays[key], name=name, legendgroup=name, showlegend=col == 1,
                             marker_color=colour(name, CLASS_COLOURS, i), histnorm="probability density",
                             opacity=0.6, nbinsx=60),
                row=1, col=col,
            )
            fig.update_xaxes(title_text=label, row=1, col=col)
        fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_layout(barmode="overlay", title=title, template="plotly_white")
    return fig


# Learning-curve panels: (title, y-axis type, which series)
CURVE_PANELS = (
    ("losses", "linear", lambda k: "loss" in k),
    ("validation accuracy", "linear", lambda k: k.startswith("val/")),
    ("learning rate", "log", lambda k: k.endswith("/lr")),
    ("teacher momentum", "linear", lambda k: "momentum" in k),
    ("monitors", "linear", lambda k: True),
)


def learning_curves(history: dict[str, list[float]], title: str,
                    steps: dict[str, list[int]] | None = None) -> go.Figure:
    """One panel per kind of series (losses, validation accuracy, LR on a log axis, momentum, other monitors), each
    series drawn at the epochs it was measured (``steps``; default 1, 2, ...)."""
    steps = steps or {}
    panels: dict[str, list[str]] = {}
    for key in history:
        panel = next(p[0] for p in CURVE_PANELS if p[2](key))
        panels.setdefault(panel, []).append(key)
    used = [p for p in CURVE_PANELS if p[0] in panels]
    fig = make_subplots(rows=len(used), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[p[0] for p in used])
    order = [key for p in used for key in panels[p[0]]]  # one colour per series, distinct across panels
    for row, (name, axis_type, _) in enumerate(used, start=1):
        for key in panels[name]:
            values = history[key]
            x = steps.get(key) or list(range(1, len(values) + 1))
            fig.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=key,
                                     line_color=colour(key, {}, order.index(key))), row=row, col=1)
        fig.update_yaxes(type=axis_type, title_text=name, row=row, col=1)
    fig.update_xaxes(title_text="epoch", row=len(used), col=1)
    fig.update_layout(title=title, template="plotly_white", height=260 * len(used) + 120)
    return fig


def roc_curves(y: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> go.Figure:
    """One-vs-rest ROC per class as signal efficiency vs background rejection 1/eps_b (log scale)."""
    from sklearn.metrics import roc_curve

    fig = go.Figure()
    columns = [1] if len(class_names) == 2 else range(len(class_names))
    for c in columns:
        fpr, tpr, _ = roc_curve(y == c, probs[:, c])
        keep = fpr > 0
        fig.add_trace(go.Scatter(x=tpr[keep], y=1.0 / fpr[keep], mode="lines", name=class_names[c],
                                 line_color=colour(class_names[c], CLASS_COLOURS, c)))
    fig.update_layout(title="ROC (one vs rest)", xaxis_title="signal efficiency εs",
                      yaxis_title="background rejection 1/εb", yaxis_type="log", template="plotly_white")
    return fig


def embedding_map(emb: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], title: str,
                  max_points: int = 3000, seed: int = 0) -> go.Figure:
    """2-D t-SNE of a subsample of the embedding, coloured by class."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(emb))[:max_points]
    xy = TSNE(n_components=2, init="pca", random_state=seed,
              perplexity=min(30.0, max(2.0, (len(idx) - 1) / 3))).fit_transform(emb[idx])
    fig = go.Figure()
    for c, name in enumerate(class_names):
        sel = labels[idx] == c
        fig.add_trace(go.Scattergl(x=xy[sel, 0], y=xy[sel, 1], mode="markers", name=name,
                                   marker={"size": 4, "opacity": 0.6, "color": colour(name, CLASS_COLOURS, c)}))
    fig.update_layout(title=f"{title}: t-SNE of {len(idx):,} of its {len(emb):,} jets", template="plotly_white",
                      xaxis_title="t-SNE 1", yaxis_title="t-SNE 2")
    return fig


def write_map_points(fig: go.Figure, path: str | Path) -> Path:
    """An ``embedding_map`` figure's points as an .npz, one (n, 2) float32 array per class: what a report that
    puts several maps side by side reads back."""
    arrays = {str(t.name): np.c_[np.asarray(t.x, dtype=np.float32), np.asarray(t.y, dtype=np.float32)]
              for t in fig.data}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)
    return atomic_write(path, write, suffix=".tmp.npz")


def maps_side_by_side(maps: dict[str, dict[str, np.ndarray]], title: str) -> go.Figure:
    """Several ``write_map_points`` maps (panel title -> class -> points), one panel each in a row, one legend."""
    fig = make_subplots(rows=1, cols=max(1, len(maps)), subplot_titles=list(maps))
    seen: set[str] = set()
    for col, points in enumerate(maps.values(), start=1):
        for c, (name, xy) in enumerate(points.items()):
            fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name=name, legendgroup=name,
                                       showlegend=name not in seen,
                                       marker={"size": 3, "opacity": 0.6, "color": colour(name, CLASS_COLOURS, c)}),
                          row=1, col=col)
            seen.add(name)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
        fig.update_yaxes(showticklabels=False, row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", height=380, legend={"itemsizing": "constant"})
    return fig
