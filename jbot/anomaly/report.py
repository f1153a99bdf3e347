"""The anomaly-detection report: one self-contained HTML file (plotly.js embedded, works offline), a metrics
JSON and a plain-text table beside the paper's Table 4."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import roc_curve

from jbot.anomaly.detect import AnomalyResult
from jbot.data.classes import LABELS, is_background, is_signal
from jbot.io import atomic_write_text
from jbot.plots import CLASS_COLOURS, SCORE_COLOURS, colour, embedding_map

# Paper, Table 4: jBOT-S pre-trained on q, g of JetNet; AUC for W / Z / t / combined
PUBLISHED_AUC = {
    "knn": (0.807, 0.836, 0.836, 0.826),
    "cosine": (0.806, 0.836, 0.839, 0.827),
    "mahalanobis": (0.743, 0.782, 0.862, 0.796),
    "gmm": (0.806, 0.820, 0.820, 0.816),
}
COLUMNS = ("W", "Z", "t", "combined")


def auc_rows(result: AnomalyResult) -> list[list[str]]:
    rows = []
    for score in result.scores:
        ours = [f"{result.metrics[f'{score}/{c}/auc']:.3f} ± {result.metrics[f'{score}/{c}/auc_std']:.3f}"
                for c in COLUMNS]
        published = " / ".join(f"{v:.3f}" for v in PUBLISHED_AUC.get(score, ()))
        rows.append([score, *ours, published or "-"])
    return rows


def text_table(result: AnomalyResult) -> str:
    header = ["score", *(f"AUC {c}" for c in COLUMNS), "published W / Z / t / comb. (JetNet)"]
    rows = [header, *auc_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)


def roc_figure(result: AnomalyResult, tuned: str | None = None) -> go.Figure:
    """ROC per signal, one fixed colour per score; the tuned score is drawn thicker and named so."""
    fig = make_subplots(rows=1, cols=4, subplot_titles=[f"{c} vs q+g" for c in COLUMNS])
    background = is_background(result.origin)
    for col, name in enumerate(COLUMNS, start=1):
        is_sig = is_signal(result.origin) if name == "combined" else is_signal(result.origin, name)
        keep = background | is_sig
        for i, (score, values) in enumerate(result.scores.items()):
            fpr, tpr, _ = roc_curve(is_sig[keep], values[keep])
            ok = fpr > 0
            label = f"{score} (tuned)" if score == tuned else score
            fig.add_trace(go.Scatter(x=tpr[ok], y=1 / fpr[ok], mode="lines", name=label, legendgroup=score,
                                     showlegend=col == 1,
                                     line={"color": colour(score, SCORE_COLOURS, i), "width": 4 if score == tuned
                                           else 2}), row=1, col=col)
        fig.update_yaxes(type="log", title_text="1/FPR" if col == 1 else None, row=1, col=col)
        fig.update_xaxes(title_text="TPR", row=1, col=col)
    fig.update_layout(title="ROC curves (background rejection, log scale)", template="plotly_white", height=420)
    return fig


def distributions_figure(result: AnomalyResult) -> go.Figure:
    names = list(result.scores)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for col, score in enumerate(names, start=1):
        values = result.scores[score]
        lo, hi = np.quantile(values, [0.001, 0.999])
        for c, label in enumerate(LABELS):
            sel = result.origin == c
            if sel.any():
                fig.add_trace(go.Histogram(x=np.clip(values[sel], lo, hi), name=label, legendgroup=label,
                                           showlegend=col == 1, marker_color=colour(label, CLASS_COLOURS, c),
                                           histnorm="probability density", opacity=0.55, nbinsx=60),
                              row=1, col=col)
        fig.update_xaxes(title_text=f"{score} score (larger = more anomalous)", row=1, col=col)
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_layout(barmode="overlay", title="score distributions per class", template="plotly_white", height=380)
    return fig


def _table(rows: dict[str, object]) -> str:
    return "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows.items()) + "</table>"


def write_report(result: AnomalyResult, out_dir: str | Path, provenance: dict[str, str], notes: list[str],
                 settings: dict[str, object] | None = None, tuned: str | None = None) -> dict:
    """Write ``anomaly_report.html``, ``anomaly_metrics.json`` and ``anomaly_table.txt``; returns their paths.
    ``settings``: the anomaly settings used (a table); ``tuned``: the score a sweep tuned (marked in the ROC)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [roc_figure(result, tuned), distributions_figure(result),
               embedding_map(result.test_embedding, result.origin, LABELS, "embedding map: q, g vs W, Z, t")]
    header = "".join(f"<th>{html.escape(h)}</th>" for h in
                     ["score", *(f"AUC {c}" for c in COLUMNS), "published W / Z / t / combined"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in auc_rows(result))
    parts = [
        "<html><head><meta charset='utf-8'><title>jbot anomaly report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>",
        "<h1>Anomaly detection with a frozen jBOT encoder</h1>",
        "<p>Encoder pre-trained on background (q, g) only; larger score = more anomalous. "
        f"Reference set: {result.reference_size} background training jets; ± = std over stratified folds "
        "of the test set. Published numbers are the paper's Table 4 (jBOT-S on JetNet), not this data.</p>",
        *(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in notes),
        f"<h2>AUC</h2><table><tr>{header}</tr>{body}</table>",
        *([f"<h2>Settings{' (tuned: ' + html.escape(tuned) + ')' if tuned else ''}</h2>{_table(settings)}"]
          if settings else []),
        f"<h2>Provenance</h2>{_table(dict(provenance))}",
    ]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>")
    report = atomic_write_text(out / "anomaly_report.html", "\n".join(parts))
    metrics_path = atomic_write_text(out / "anomaly_metrics.json", json.dumps(result.metrics, indent=2, sort_keys=True))
    table_path = atomic_write_text(out / "anomaly_table.txt", text_table(result) + "\n")
    return {"report": report, "metrics": metrics_path, "table": table_path}
