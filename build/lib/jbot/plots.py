"""plotly figures, written as self-contained HTML (plotly.js embedded: renders offline and in the MLflow UI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from jbot.io import atomic_write


def write_html(fig: go.Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True))


def data_distributions(per_class: dict[str, dict[str, np.ndarray]], title: str) -> go.Figure:
    """Histograms per class of jet mass, jet pT and constituent multiplicity."""
    panels = [("mass", "jet mass [GeV]"), ("pt", "jet pT [GeV]"), ("multiplicity", "constituents")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[label for _, label in panels])
    for name, arrays in per_class.items():
        for col, (key, _) in enumerate(panels, start=1):
            fig.add_trace(
                go.Histogram(x=arrays[key], name=name, legendgroup=name, showlegend=col == 1,
                             histnorm="probability density", opacity=0.6, nbinsx=60),
                row=1, col=col,
            )
    fig.update_layout(barmode="overlay", title=title, template="plotly_white")
    return fig


def learning_curves(history: dict[str, list[float]], title: str) -> go.Figure:
    fig = go.Figure()
    for name, values in history.items():
        fig.add_trace(go.Scatter(y=values, x=list(range(1, len(values) + 1)), mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="epoch", template="plotly_white")
    return fig


def roc_curves(y: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> go.Figure:
    """One-vs-rest ROC per class as signal efficiency vs background rejection 1/eps_b (log scale)."""
    from sklearn.metrics import roc_curve

    fig = go.Figure()
    columns = [1] if len(class_names) == 2 else range(len(class_names))
    for c in columns:
        fpr, tpr, _ = roc_curve(y == c, probs[:, c])
        keep = fpr > 0
        fig.add_trace(go.Scatter(x=tpr[keep], y=1.0 / fpr[keep], mode="lines", name=class_names[c]))
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
                                   marker={"size": 4, "opacity": 0.6}))
    fig.update_layout(title=title, template="plotly_white", xaxis_title="t-SNE 1", yaxis_title="t-SNE 2")
    return fig
