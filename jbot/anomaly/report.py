"""The anomaly-detection report: one self-contained HTML file (plotly.js embedded, works offline), a metrics
JSON and a plain-text table beside the paper's Table 4."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import roc_curve

from jbot.anomaly.detect import FPR_TARGETS, AnomalyResult, group_masks
from jbot.anomaly.sculpting import JSD_INV_CAP, SCULPT_EPS_B, has_mass, mass_edges, sic_curve
from jbot.data.presets import QG_GROUPS, Groups, PresetError, get_preset
from jbot.evaluate.metrics import MIN_BACKGROUND, shown
from jbot.io import atomic_write_text
from jbot.plots import CLASS_COLOURS, SCORE_COLOURS, colour, embedding_map

# Paper, Table 4: jBOT-S pre-trained on q, g of JetNet; AUC for W / Z / t / combined
PUBLISHED_AUC = {
    "knn": (0.807, 0.836, 0.836, 0.826),
    "cosine": (0.806, 0.836, 0.839, 0.827),
    "mahalanobis": (0.743, 0.782, 0.862, 0.796),
    "gmm": (0.806, 0.820, 0.820, 0.816),
}


def pretrained_on(preset: str) -> tuple[str, ...] | None:
    """The class names a preset pre-trains on (an anomaly preset keeps its signals for validation and test: the
    paper's setting), or None for a preset this installation cannot read."""
    try:
        spec = get_preset(preset)
    except PresetError:
        return None
    keys = spec.background if spec.split == "anomaly" else spec.classes
    return tuple(spec.name_of(c) for c in keys)


def signal_exposure(state: Mapping[str, Any], classes: Groups = QG_GROUPS) -> tuple[bool, str] | None:
    """Whether a checkpoint's encoder saw signal jets (W, Z, t; those of ``classes``) in training, and how
    ("pre-trained on ..."); None when the checkpoint does not say (streamed data, an untrained encoder, an imported
    file of another name)."""
    from jbot.model.keras_import import KERAS_LABELS, NAME

    # the signals' class names in their dataset (W, Z, t; Hbb, ...), what a preset's classes are named by too
    signal_labels = {classes.names[o] for _, origins in classes.signals for o in origins} or set(classes.columns[:-1])
    backbone = (state.get("source") or {}).get("backbone")
    if backbone:  # an imported published backbone: its training data by the prefix of its file name
        match = NAME.match(Path(backbone).name)
        if match is None:
            return None
        seen = KERAS_LABELS[match.group(1)]
        return bool(signal_labels & set(seen)), f"imported from {Path(backbone).name}, trained on {', '.join(seen)}"
    names = tuple(state.get("class_names") or ())
    if "classifier" in state and signal_labels & set(names):
        return True, f"fine-tuned on labelled {', '.join(names)} jets"
    data = (state.get("config") or {}).get("data") or {}
    preset = data.get("preset")
    seen_names = pretrained_on(preset) if isinstance(preset, str) and not data.get("stream") else None
    if seen_names is None:
        return None
    return bool(set(seen_names) & signal_labels), f"pre-trained on the {preset} preset ({', '.join(seen_names)})"


def signal_note(how: str, classes: Groups = QG_GROUPS) -> str:
    """The report's and the console's note on an encoder that saw signal jets (``how``: of ``signal_exposure``)."""
    if classes == QG_GROUPS:
        return (f"this encoder was {how}: it saw signal jets in training, unlike the paper's unsupervised setting "
                "(pre-training on q, g alone) behind Table 4's published numbers")
    return (f"this encoder was {how}: it saw signal jets in training, so this is not unsupervised anomaly "
            f"detection (pre-training on the background, {classes.background_label}, alone)")


def is_jetnet(result: AnomalyResult) -> bool:
    """The paper's setting (JetNet's q, g against W, Z, t): Table 4's numbers are a comparison."""
    return result.classes == QG_GROUPS


def auc_rows(result: AnomalyResult) -> list[list[str]]:
    rows = []
    for score in result.scores:
        ours = [f"{result.metrics[f'{score}/{c}/auc']:.3f} ± {result.metrics[f'{score}/{c}/auc_std']:.3f}"
                if f"{score}/{c}/auc" in result.metrics else "-" for c in result.classes.columns]
        published = " / ".join(f"{v:.3f}" for v in PUBLISHED_AUC.get(score, ()))
        rows.append([score, *ours, *([published or "-"] if is_jetnet(result) else [])])
    return rows


def working_point_rows(result: AnomalyResult) -> list[list[str]]:
    """TPR at each fixed FPR per score and signal; one the test set cannot resolve says so, without an error."""
    return [[score, f"FPR = {f:g}", *(shown(result.metrics, f"{score}/{c}/tpr_at_fpr_{f:g}", 3)
                                      for c in result.classes.columns)]
            for score in result.scores for f in FPR_TARGETS]


def sizes_text(result: AnomalyResult) -> str:
    """The test set behind every number, and chance."""
    m = next(iter(result.scores), None)
    if m is None or f"{m}/combined/n_background" not in result.metrics:
        return ""
    counts = ", ".join(f"{int(result.metrics.get(f'{m}/{c}/n_signal', 0))} {c}" for c in result.classes.columns[:-1])
    return (f"test set: {int(result.metrics[f'{m}/combined/n_background'])} background "
            f"({result.classes.background_label}) jets and {counts}; "
            f"chance AUC 0.50; a TPR at an FPR that stands on fewer than {MIN_BACKGROUND} background jets is not "
            "resolved")


def sculpting_header(result: AnomalyResult) -> list[str]:
    rho = [f"ρ(score, m) {result.classes.names[o]}" for o in result.classes.background]
    return ["score", *(f"max SIC {c}" for c in result.classes.columns), *rho,
            *(f"1/JSD at ε_b = {e:g}" for e in SCULPT_EPS_B)]


def sculpting_rows(result: AnomalyResult) -> list[list[str]]:
    """Per score: max SIC per signal, ρ(score, mass) per background class, 1/JSD of the background's mass after
    cuts ("-" where the data has no mass or a cut keeps too few jets)."""
    def cell(key: str, digits: int = 2) -> str:
        v = result.metrics.get(key)
        if v is None or v != v:
            return "-"
        return f"> {JSD_INV_CAP:.0e}" if v >= JSD_INV_CAP else f"{v:.{digits}f}"

    rows = []
    for score in result.scores:
        rows.append([score, *(cell(f"{score}/{c}/max_sic") for c in result.classes.columns),
                     *(cell(f"{score}/mass_rho/{result.classes.names[o]}") for o in result.classes.background),
                     *(cell(f"{score}/mass_jsd_inv/eps_b_{e:g}", 1) for e in SCULPT_EPS_B)])
    return rows


def contamination_fractions(result: AnomalyResult) -> list[float]:
    found = {float(k.split("/")[1].removeprefix("contaminated_")) for k in result.metrics
             if k.split("/")[1:2] and k.split("/")[1].startswith("contaminated_")}
    return sorted(found)


def contamination_header(result: AnomalyResult) -> list[str]:
    return ["score", "signal in R", *(f"AUC Δ at {f:g}" for f in contamination_fractions(result)),
            *(f"max SIC Δ at {f:g}" for f in contamination_fractions(result))]


def contamination_rows(result: AnomalyResult) -> list[list[str]]:
    """Per score and contaminating signal (``combined``: all mixed): the AUC and max-SIC change against the clean
    reference set at each fraction ("-" where the validation split held too few signal jets)."""
    fractions = contamination_fractions(result)

    def delta(score: str, name: str, metric: str, f: float) -> str:
        clean = result.metrics.get(f"{score}/{name}/{metric}")
        dirty = result.metrics.get(f"{score}/contaminated_{f:g}/{name}/{metric}")
        if clean is None or dirty is None or clean != clean or dirty != dirty:
            return "-"
        return f"{dirty - clean:+.3f}" if metric == "auc" else f"{dirty - clean:+.2f}"

    return [[score, name, *(delta(score, name, "auc", f) for f in fractions),
             *(delta(score, name, "max_sic", f) for f in fractions)]
            for score in result.scores for name in result.classes.columns]


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]


def text_table(result: AnomalyResult) -> str:
    header = ["score", *(f"AUC {c}" for c in result.classes.columns),
              *(["published W / Z / t / comb. (JetNet)"] if is_jetnet(result) else [])]
    lines = _aligned([header, *auc_rows(result)])
    if sizes_text(result):
        lines.append(sizes_text(result))
    lines += ["", *_aligned([sculpting_header(result), *sculpting_rows(result)])]
    if contamination_fractions(result):
        lines += ["", "contaminated reference set (change against the clean one; signal jets from the validation "
                  "split, each signal alone, combined = all mixed):",
                  *_aligned([contamination_header(result), *contamination_rows(result)])]
    if not has_mass(result.mass):
        lines.append(NO_MASS)
    return "\n".join(lines)


NO_MASS = "mass sculpting was not measured (anomaly.sculpting=false): no mass-sculpting figures"


def roc_figure(result: AnomalyResult, tuned: str | None = None) -> go.Figure:
    """ROC per signal, one fixed colour per score; the tuned score is drawn thicker and named so."""
    columns = result.classes.columns
    fig = make_subplots(rows=1, cols=len(columns),
                        subplot_titles=[f"{c} vs {result.classes.background_label}" for c in columns])
    eff = np.geomspace(1e-3, 1.0, 60)
    background, masks = group_masks(result.origin, result.classes)
    for col, name in enumerate(columns, start=1):
        is_sig = masks[name]
        keep = background | is_sig
        if not is_sig[keep].any() or is_sig[keep].all():
            continue
        for i, (score, values) in enumerate(result.scores.items()):
            fpr, tpr, _ = roc_curve(is_sig[keep], values[keep])
            ok = fpr > 0
            label = f"{score} (tuned)" if score == tuned else score
            fig.add_trace(go.Scatter(x=tpr[ok], y=1 / fpr[ok], mode="lines", name=label, legendgroup=score,
                                     showlegend=col == 1,
                                     line={"color": colour(score, SCORE_COLOURS, i), "width": 4 if score == tuned
                                           else 2}), row=1, col=col)
        fig.add_trace(go.Scatter(x=eff, y=1 / eff, mode="lines", name="random (1/ε_b = 1/ε_s)", legendgroup="random",
                                 showlegend=col == 1, line={"color": "#999", "dash": "dash", "width": 1}),
                      row=1, col=col)
        fig.update_yaxes(type="log", title_text="background rejection 1/ε_b (1/FPR)" if col == 1 else None,
                         row=1, col=col)
        fig.update_xaxes(title_text="signal efficiency ε_s (TPR)", row=1, col=col)
    fig.update_layout(title="ROC curves (background rejection, log scale; combined = every signal against the "
                      "background)", template="plotly_white", height=420)
    return fig


def sic_figure(result: AnomalyResult, tuned: str | None = None) -> go.Figure:
    """SIC = ε_s / √ε_b against ε_s per signal, one fixed colour per score (as the ROC), the random score's √ε_s."""
    columns = result.classes.columns
    fig = make_subplots(rows=1, cols=len(columns),
                        subplot_titles=[f"{c} vs {result.classes.background_label}" for c in columns])
    background, masks = group_masks(result.origin, result.classes)
    eff = np.linspace(0.01, 1.0, 60)
    for col, name in enumerate(columns, start=1):
        keep = background | masks[name]
        for i, (score, values) in enumerate(result.scores.items()):
            eps_s, eps_b, sic = sic_curve(masks[name][keep], values[keep])
            floor = eps_b >= 1.0 / max(int(background.sum()), 1)
            label = f"{score} (tuned)" if score == tuned else score
            fig.add_trace(go.Scatter(x=eps_s[floor], y=sic[floor], mode="lines", name=label, legendgroup=score,
                                     showlegend=col == 1,
                                     line={"color": colour(score, SCORE_COLOURS, i), "width": 4 if score == tuned
                                           else 2}), row=1, col=col)
        fig.add_trace(go.Scatter(x=eff, y=np.sqrt(eff), mode="lines", name="random (SIC = √ε_s)",
                                 legendgroup="random", showlegend=col == 1,
                                 line={"color": "#999", "dash": "dash", "width": 1}), row=1, col=col)
        fig.update_xaxes(title_text="signal efficiency ε_s", row=1, col=col)
    fig.update_yaxes(title_text="SIC = ε_s / √ε_b", row=1, col=1)
    fig.update_layout(title="Significance improvement (larger is better; above √ε_s the cut helps a search)",
                      template="plotly_white", height=400)
    return fig


def mass_figure(result: AnomalyResult) -> go.Figure | None:
    """The background's jet mass before and after cuts keeping ε_b of it, per score (shared bins, unit area);
    None without a usable mass."""
    if not has_mass(result.mass):
        return None
    assert result.mass is not None
    background, _ = group_masks(result.origin, result.classes)
    mass = result.mass[background]
    edges = mass_edges(mass, 40)
    names = list(result.scores)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    shades = {1.0: "#222", 0.5: "#1f77b4", 0.1: "#ff7f0e", 0.01: "#d62728"}
    for col, score in enumerate(names, start=1):
        order = np.argsort(-result.scores[score][background], kind="mergesort")
        for e, shade in shades.items():
            kept = mass[order[:int(np.floor(e * len(mass)))]]
            if len(kept) < 10:
                continue
            density, _ = np.histogram(kept, edges, density=True)
            fig.add_trace(go.Scatter(x=edges, y=np.r_[density, density[-1]], mode="lines", line_shape="hv",
                                     name="all background" if e == 1.0 else f"after a cut at ε_b = {e:g}",
                                     legendgroup=str(e), showlegend=col == 1,
                                     line={"color": shade, "width": 2}), row=1, col=col)
        fig.update_xaxes(title_text="jet mass [GeV]", row=1, col=col)
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_layout(title="Background jet mass before and after a cut on each score (the same shape = no "
                      "sculpting)", template="plotly_white", height=380)
    return fig


def distributions_figure(result: AnomalyResult) -> go.Figure:
    names = list(result.scores)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for col, score in enumerate(names, start=1):
        values = result.scores[score]
        lo, hi = np.quantile(values, [0.001, 0.999])
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 61)  # one set of bins for every class of this score
        for c, label in enumerate(result.classes.names):
            sel = result.origin == c
            if sel.any():
                density, _ = np.histogram(np.clip(values[sel], edges[0], edges[-1]), edges, density=True)
                fig.add_trace(go.Scatter(x=edges, y=np.r_[density, density[-1]], mode="lines", line_shape="hv",
                                         name=label, legendgroup=label, showlegend=col == 1,
                                         line={"color": colour(label, CLASS_COLOURS, c), "width": 2}),
                              row=1, col=col)
        fig.update_xaxes(title_text=f"{score} score (larger = more anomalous)", row=1, col=col)
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_layout(title="score distributions per class (shared bins, unit area)", template="plotly_white",
                      height=380)
    return fig


def _table(rows: dict[str, object]) -> str:
    return "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows.items()) + "</table>"


def write_report(result: AnomalyResult, out_dir: str | Path, provenance: dict[str, str], notes: list[str],
                 settings: dict[str, object] | None = None, tuned: str | None = None,
                 saw_signal: bool = False) -> dict:
    """Write ``anomaly_report.html``, ``anomaly_metrics.json`` and ``anomaly_table.txt``; returns their paths.
    ``settings``: the anomaly settings used (a table); ``tuned``: the score a sweep tuned (marked in the ROC);
    ``saw_signal``: the encoder was trained on signal jets too (a note says how)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = result.classes
    signals = ", ".join(classes.columns[:-1])
    mass_fig = mass_figure(result)
    figures = [roc_figure(result, tuned), sic_figure(result, tuned), *([mass_fig] if mass_fig else []),
               distributions_figure(result),
               embedding_map(result.test_embedding, result.origin, classes.names,
                             f"embedding map: {classes.background_label} vs {signals}")]
    header = "".join(f"<th>{html.escape(h)}</th>" for h in
                     ["score", *(f"AUC {c}" for c in classes.columns),
                      *(["published W / Z / t / combined"] if is_jetnet(result) else [])])
    def tr(row: list[str]) -> str:  # the score a sweep tuned: its row marked
        mark = row[0] == tuned
        cells = "".join(f"<td>{html.escape(c + (' (tuned)' if mark and i == 0 else ''))}</td>"
                        for i, c in enumerate(row))
        return f"<tr class='tuned'>{cells}</tr>" if mark else f"<tr>{cells}</tr>"

    body = "".join(tr(row) for row in auc_rows(result))
    parts = [
        "<html><head><meta charset='utf-8'><title>jbot anomaly report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}tr.tuned td{background:#fff3cd;font-weight:bold}"
        "</style></head><body>",
        "<h1>Anomaly detection with a frozen jBOT encoder</h1>",
        "<p>" + ("Encoder trained on signal jets too (see the note): not the paper's setting; " if saw_signal
                 else f"Encoder pre-trained on background ({html.escape(classes.background_label)}) only; ")
        + "larger score = more anomalous. "
        f"Reference set: {result.reference_size} background training jets; ± = std over stratified folds "
        "of the test set." + (" Published numbers are the paper's Table 4 (jBOT-S on JetNet), not this data."
                              if is_jetnet(result) else "") + "</p>",
        *(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in notes),
        f"<h2>AUC</h2><table><tr>{header}</tr>{body}</table>",
        f"<p><i>combined</i>: every signal ({html.escape(signals)}) together against the background "
        f"({html.escape(classes.background_label)}). Chance is an AUC of 0.50.</p>",
        f"<p>{html.escape(sizes_text(result))}</p>",
        "<h2>Sensitivity and mass sculpting</h2><table><tr>" + "".join(
            f"<th>{html.escape(h)}</th>" for h in sculpting_header(result)) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in sculpting_rows(result))
        + "</table>",
        "<p>Max SIC: the largest ε_s / √ε_b at ε_b of at least one test background jet and 1e-4 (larger is "
        "better; a random score reaches 1). ρ(score, m): Spearman correlation of the score with the jet mass within "
        "each background class (near 0 is good: a cut keeps the mass spectrum). 1/JSD: the background's mass "
        "histogram after a cut keeping ε_b of it against before, 1 / Jensen-Shannon divergence (larger is better; "
        "- where the cut keeps fewer than 10 jets).</p>"
        + ("" if has_mass(result.mass) else f"<p><b>Note:</b> {html.escape(NO_MASS)}.</p>"),
        *([("<h2>Contaminated reference set</h2><p>Every score re-fit with the fraction f of the reference set "
            "replaced by signal jets of the validation split (never the test jets), each signal alone and all "
            "mixed (combined), labelled as background as unlabelled data would be: the change of the AUC and of "
            "the max SIC for that signal against the clean reference set. Near 0 is robust.</p><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in contamination_header(result)) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                      for row in contamination_rows(result)) + "</table>")] if contamination_fractions(result)
          else []),
        "<h2>TPR at fixed FPR</h2><table><tr>" + "".join(
            f"<th>{html.escape(h)}</th>" for h in ["score", "working point", *classes.columns]) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in working_point_rows(result))
        + "</table>",
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
