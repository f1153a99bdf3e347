"""plotly figures, written as self-contained HTML (plotly.js embedded: renders offline and in the MLflow UI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def write_html(fig: go.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


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
