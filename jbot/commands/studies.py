"""The studies ``jbot reproduce --study`` runs, one ``STUDIES`` entry each (docs/method.md §10):

- ``paper``: the paper's protocol (``reproduce.STEPS`` and ``reproduce.CLAIMS``);
- ``ablation``: the full method and each variant (particle loss only, [CLS] loss only, no KoLeo, no masking)
  pre-trained on the same jets with the same seed, each probed on 5 classes (k-NN, linear, clustering) and
  pre-trained again on q+g for its anomaly AUC; a claim per variant ("removing X costs k-NN accuracy") judged by
  the paired bootstrap of the two probes' per-jet outputs, and the paper's load-bearing claim, that the
  combination of both losses is what clusters the jets;
- ``label-fraction``: fine-tuning from the 5-class pre-trained encoder and from scratch with each fraction of the
  labels in ``evaluate.label_fractions`` (1, 5, 10, 50, 100 %), on 5 classes and on top tagging; a claim per
  fraction (paired bootstrap), the curves with fold-std bands and the fraction where pre-training stops helping.

A study is steps and claims built from ``reproduce``'s step factories; adding one is an entry here (and its test).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import numpy as np

from jbot.commands import reproduce as r
from jbot.commands.common import INIT_COLOURS, percent
from jbot.commands.reproduce import Claim, Collected, Paired, ReproduceError, Step, Study, Variant
from jbot.config import EvaluateConfig, JbotConfig
from jbot.evaluate.metrics import EPS_S_TARGETS, unresolved

# ------------------------------------------------------------------------------------------------ ablation

FULL = Variant("full", "nothing")
VARIANTS: tuple[Variant, ...] = (
    FULL,
    Variant("part-only", "the [CLS] loss", (("pretrain.use_cls_loss", False),)),
    Variant("cls-only", "the particle loss", (("pretrain.use_part_loss", False),)),
    Variant("no-koleo", "the KoLeo term", (("pretrain.koleo_weight", 0.0),)),
    Variant("no-mask", "masking", (("mask.enabled", False),)),
)
PROBE_ROWS = ("test/knn_acc", "test/linear_acc", "test/purity", "test/ari", "test/nmi")
ANOMALY_ROW = "test/knn/combined/auc"
SINGLE_LOSS = ("part-only", "cls-only")  # the variants the paper's claim is about


def _ablation_steps(variants: tuple[Variant, ...], anomaly: bool) -> tuple[Step, ...]:
    steps: list[Step] = []
    for v in variants:
        steps += [Step(f"pretrain-5class-{v.name}", r._pretrain("5class", v)),
                  Step(f"probe-{v.name}", r._probe("5class", f"pretrain-5class-{v.name}"), baseline=PROBE_ROWS)]
        if anomaly:
            steps += [Step(f"pretrain-qg-{v.name}", r._pretrain("qg", v)),
                      Step(f"anomaly-{v.name}", r._anomaly("qg", f"pretrain-qg-{v.name}"),
                           baseline=(ANOMALY_ROW,))]
    return tuple(steps)


def _without(v: Variant) -> Claim:
    """Removing what ``v`` removes costs 5-class k-NN accuracy: the full method's probe above ``v``'s."""
    return Claim(f"without_{v.name}", ("probe-full", f"probe-{v.name}"), r._above_scratch(
        "test/knn_acc", f"removing {v.removes} ({v.name}) costs {{gap:+.3f}} 5-class k-NN accuracy "
                        "(beyond the fold std {margin:.3f} when positive and larger)"),
        Paired("accuracy", 0.0, f"removing {v.removes} ({v.name}) costs {{value}} 5-class k-NN accuracy"))


def _value(metrics: dict[str, dict[str, float]], step: str, key: str) -> tuple[float, float]:
    """(value, fold std) of a step's metric, NaN where absent."""
    return r.Metrics(metrics.get(step, {}))[key]


def ablation_section(got: Collected) -> dict[str, Any]:
    """The table (a row per variant: its probes, clustering, anomaly AUC, final health and what removing it costs),
    the paper's claim on the two single-loss variants, and the variants' t-SNE maps (``_maps``, not in the JSON)."""
    from jbot.commands.probe import MAP_POINTS

    claims = {c["name"]: c for c in got.claims}
    full_knn, full_std = _value(got.metrics, "probe-full", "test/knn_acc")
    rows, maps = [], {}
    for v in VARIANTS:
        if f"probe-{v.name}" not in got.metrics and f"pretrain-5class-{v.name}" not in got.metrics:
            continue  # not among evaluate.ablation_variants
        knn, std = _value(got.metrics, f"probe-{v.name}", "test/knn_acc")
        pre = got.metrics.get(f"pretrain-5class-{v.name}", {})
        claim = claims.get(f"without_{v.name}")
        row: dict[str, Any] = {
            "variant": v.name, "removes": v.removes,
            **{key.removeprefix("test/"): _value(got.metrics, f"probe-{v.name}", key) for key in PROBE_ROWS},
            "anomaly_auc": _value(got.metrics, f"anomaly-{v.name}", ANOMALY_ROW),
            "cls_rank": pre.get("health/cls_rank", float("nan")),
            "teacher_occupancy": pre.get("health/teacher_occupancy", float("nan"))}
        if v is not FULL:
            cost = full_knn - knn
            row.update(cost=cost, beyond_std=bool(cost > max(full_std, std)),
                       verdict=r.verdict(claim) if claim else "-", se=claim.get("paired", {}).get("se")
                       if claim else None)
        rows.append(row)
        path = got.outputs.artifact(f"probe-{v.name}", str(MAP_POINTS))
        if path is not None and path.is_file():
            with np.load(path) as f:
                maps[v.name] = {k: f[k] for k in f.files}
    single = [claims[f"without_{n}"] for n in SINGLE_LOSS if f"without_{n}" in claims]
    holds = len(single) == len(SINGLE_LOSS) and all(c["holds"] for c in single)
    missing = [n for n in SINGLE_LOSS if f"without_{n}" not in claims]
    combination = {
        "name": "combination", "holds": holds,
        "within_error": holds and any(c.get("within_error") for c in single),
        "text": "the paper's claim, that the combination of particle- and jet-level distillation is what clusters "
                "the jets: the full method above both single-loss variants in 5-class k-NN accuracy ("
                + "; ".join([f"{c['name'].removeprefix('without_')}: {r.verdict(c)}" for c in single]
                            + [f"{n}: not run (evaluate.ablation_variants)" for n in missing]) + ")"}
    return {"claims": [combination], "ablation": rows, "_maps": maps}


def _missing(value: Any) -> bool:
    return value is None or value != value  # None or NaN


def _num(value: Any, digits: int = 3) -> str:
    return "-" if _missing(value) else f"{value:.{digits}f}"


def ablation_html(summary: dict[str, Any]) -> str:
    from jbot.plots import maps_side_by_side

    esc = html.escape

    def pm(pair: Any) -> str:
        value, std = pair
        return f"{_num(value)} ± {_num(std)}"

    rows = summary.get("ablation", [])
    # the anomaly column only where a variant has an AUC (not with evaluate.ablation_anomaly=false)
    anomaly = not all(_missing(row["anomaly_auc"][0]) for row in rows)
    head = ("<tr><th>variant</th><th>removes</th><th>k-NN acc</th><th>cost vs full</th><th>beyond fold std</th>"
            "<th>paired bootstrap</th><th>linear acc</th><th>purity</th><th>ARI</th><th>NMI</th>"
            + ("<th>q+g anomaly AUC (k-NN, combined)</th>" if anomaly else "")
            + "<th>[CLS] rank</th><th>teacher occupancy</th></tr>")
    body = "".join(
        f"<tr><td>{esc(row['variant'])}</td><td>{esc(row['removes'])}</td><td>{pm(row['knn_acc'])}</td>"
        + (f"<td>{_num(row['cost'])}" + (f" (SE {_num(row['se'])})" if row.get("se") is not None else "")
           + f"</td><td>{'yes' if row['beyond_std'] else 'no'}</td><td>{esc(row['verdict'])}</td>"
           if "cost" in row else "<td>-</td><td>-</td><td>-</td>")
        + f"<td>{pm(row['linear_acc'])}</td><td>{_num(row['purity'][0])}</td><td>{_num(row['ari'][0])}</td>"
        f"<td>{_num(row['nmi'][0])}</td>" + (f"<td>{pm(row['anomaly_auc'])}</td>" if anomaly else "")
        + f"<td>{_num(row['cls_rank'], 2)}</td><td>{_num(row['teacher_occupancy'], 2)}</td></tr>" for row in rows)
    maps = summary.get("_maps") or {}
    figure = "" if not maps else maps_side_by_side(
        maps, "frozen [CLS] of the test jets per variant (t-SNE)").to_html(full_html=False, include_plotlyjs=False)
    return (f"<h2>Ablation</h2><p>Each variant is the full method with one piece removed, pre-trained on the same "
            "jets with the same seed and settings; the cost is the full method's 5-class k-NN accuracy minus the "
            "variant's (positive: removing it hurts), beside the larger of the two fold stds and the verdict of the "
            "paired bootstrap of the two probes on the same test jets. [CLS] rank and teacher occupancy are the "
            "last pre-training epoch's representation health (docs/method.md §5.7).</p>"
            f"<table>{head}{body}</table>{figure}")


# ------------------------------------------------------------------------------------------ label fraction

TASKS = (("5class", "test/acc", "accuracy"), ("tqg", "test/auc", "auc"))  # task, its claim's metric, bootstrap's
REJECTIONS = tuple(f"test/rejection_at_{e:g}" for e in EPS_S_TARGETS)


pct = percent


def claim_name(task: str, fraction: float) -> str:
    """``5class_10pct``: the claim (and the parent's tag ``claim.<name>``, which takes no "%")."""
    return f"{task}_{fraction * 100:g}pct"


def _fraction_steps(fractions: tuple[float, ...]) -> tuple[Step, ...]:
    steps = [Step("pretrain-5class", r._pretrain("5class"))]
    for task, metric, _ in TASKS:
        rows = ("test/acc", *((metric, *REJECTIONS) if task == "tqg" else ()))
        for f in fractions:
            steps += [Step(f"finetune-{task}-{pct(f)}-pretrained", r._finetune(task, f, "pretrain-5class"),
                           baseline=rows),
                      Step(f"finetune-{task}-{pct(f)}-scratch", r._finetune(task, f), baseline=rows)]
    return tuple(steps)


def _fraction_claims(fractions: tuple[float, ...]) -> tuple[Claim, ...]:
    claims = []
    for task, metric, paired in TASKS:
        what = "5-class accuracy" if task == "5class" else "top-tagging AUC"
        for f in fractions:
            lead = f"{task}, {pct(f)} of the labels: fine-tuned above from scratch by"
            claims.append(Claim(
                claim_name(task, f), (f"finetune-{task}-{pct(f)}-pretrained", f"finetune-{task}-{pct(f)}-scratch"),
                r._above_scratch(metric, lead + f" {{gap:+.4f}} {what} (fold std {{margin:.4f}})"),
                Paired(paired, 0.0, lead + f" {{value}} {what}")))
    return tuple(claims)


def _fractions_run(got: Collected) -> dict[str, tuple[float, ...]]:
    """Each task's fractions, as its finished steps name them (the report reads what ran)."""
    out: dict[str, tuple[float, ...]] = {}
    for task, _, _ in TASKS:
        prefix = f"finetune-{task}-"
        found = {float(name[len(prefix):].split("%")[0]) / 100 for name in got.metrics
                 if name.startswith(prefix) and name.endswith("-pretrained")}
        out[task] = tuple(sorted(found))
    return out


def crossover(helps: list[tuple[float, bool]]) -> str:
    """Where pre-training stops helping, from (fraction, clearly helps) in increasing fraction: in words. The
    crossover is the smallest fraction from which on it helps clearly at no larger one."""
    if not helps:
        return "no fraction ran"
    last = max((i for i, (_, h) in enumerate(helps) if h), default=-1)
    if last < 0:
        return "pre-training helps clearly at no fraction"
    below = [pct(f) for f, h in helps[:last] if not h]
    if last == len(helps) - 1 and not below:
        return f"pre-training helps clearly at every fraction, up to {pct(helps[-1][0])}"
    text = f"pre-training helps clearly up to {pct(helps[last][0])} of the labels" + (
        f" (not at {', '.join(below)})" if below else "")
    if last == len(helps) - 1:
        return text
    return text + f"; from {pct(helps[last + 1][0])} on it does not (the crossover)"


def fraction_section(got: Collected) -> dict[str, Any]:
    """Per task, a row per fraction (pre-trained and scratch with fold std, the gain and its verdict, and for top
    tagging the rejections) and the crossover."""
    claims = {c["name"]: c for c in got.claims}
    curves: dict[str, Any] = {}
    for task, metric, _ in TASKS:
        rows, helps = [], []
        for f in _fractions_run(got)[task]:
            name = f"finetune-{task}-{pct(f)}"
            keys = ("test/acc", *((metric, *REJECTIONS) if task == "tqg" else ()))
            row: dict[str, Any] = {"fraction": f}
            for side in ("pretrained", "scratch"):
                for key in keys:
                    short, m = f"{side}/{key.removeprefix('test/')}", got.metrics.get(f"{name}-{side}", {})
                    row[short] = _value(got.metrics, f"{name}-{side}", key)
                    if unresolved(m, key):  # a working point on fewer than 10 background jets
                        row[f"{short}_n_bkg"] = int(m.get(f"{key}_n_bkg", 0))
            claim = claims.get(claim_name(task, f))
            row["verdict"] = r.verdict(claim) if claim else "-"
            row["gain"] = row[f"pretrained/{metric.removeprefix('test/')}"][0] - \
                row[f"scratch/{metric.removeprefix('test/')}"][0]
            helps.append((f, bool(claim and claim["holds"] and not claim.get("within_error"))))
            rows.append(row)
        curves[task] = {"metric": metric.removeprefix("test/"), "rows": rows, "crossover": crossover(helps)}
    return {"label_fraction": curves}


def fraction_figure(curves: dict[str, Any]) -> Any:
    """Accuracy (both tasks) and top tagging's 1/eps_b at eps_s = 0.3 and 0.5 against the labelled fraction,
    pre-trained and from scratch, each with a band of ± the fold std."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [("5class", "acc", "5-class accuracy"), ("tqg", "acc", "top tagging: accuracy"),
              *(("tqg", f"rejection_at_{e:g}", f"top tagging: 1/εb at εs = {e:g}") for e in EPS_S_TARGETS)]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, _, t in panels])
    colours = INIT_COLOURS
    for col, (task, key, _) in enumerate(panels, start=1):
        rows = curves.get(task, {}).get("rows", [])
        x = [row["fraction"] for row in rows]
        for side, c in colours.items():
            value = np.array([row[f"{side}/{key}"][0] for row in rows], dtype=float)
            std = np.nan_to_num(np.array([row[f"{side}/{key}"][1] for row in rows], dtype=float))
            low = value - std
            if key.startswith("rejection"):  # a log axis: the band stops at a tenth of the value
                low = np.maximum(low, value / 10)
            fig.add_trace(go.Scatter(x=x + x[::-1], y=list(value + std) + list(low[::-1]), fill="toself", mode="lines",
                                     fillcolor=c, opacity=0.15, line={"width": 0}, hoverinfo="skip",
                                     showlegend=False, legendgroup=side), row=1, col=col)
            fig.add_trace(go.Scatter(x=x, y=value, mode="lines+markers", name=f"{side} (± fold std)",
                                     line_color=c, legendgroup=side, showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(type="log", title_text="labelled fraction", row=1, col=col)
        if key.startswith("rejection"):
            fig.update_yaxes(type="log", row=1, col=col)
    fig.update_layout(title="Fine-tuning from the pre-trained encoder and from scratch against the labelled fraction",
                      template="plotly_white", height=420)
    return fig


def fraction_html(summary: dict[str, Any]) -> str:
    esc = html.escape
    curves = summary.get("label_fraction", {})
    parts = ["<h2>Label fraction</h2><p>Each fraction is a class-balanced subset of the training labels drawn by "
             "finetune.seed; pre-trained and from scratch share it. The gain is pre-trained minus scratch on the "
             "task's metric (5-class: accuracy, top tagging: AUC), judged by the paired bootstrap of the two "
             "classifiers on the same test jets; pre-training helps clearly where that interval excludes 0.</p>"]
    for task, curve in curves.items():
        metric = curve["metric"]
        extra = [k.split("/", 1)[1] for k in (curve["rows"][0] if curve["rows"] else {})
                 if k.startswith("pretrained/") and not k.endswith("_n_bkg")]
        head = "".join(f"<th>pre-trained {esc(k)}</th><th>scratch {esc(k)}</th>" for k in extra)

        def cell(row: dict[str, Any], key: str) -> str:
            value, std = row[key]
            if f"{key}_n_bkg" in row:
                return f"<td>{_num(value)} (not resolved: {row[f'{key}_n_bkg']} bkg jets)</td>"
            return f"<td>{_num(value)} ± {_num(std)}</td>"
        body = "".join(
            f"<tr><td>{pct(row['fraction'])}</td>"
            + "".join(cell(row, f"pretrained/{k}") + cell(row, f"scratch/{k}") for k in extra)
            + f"<td>{_num(row['gain'], 4)}</td><td>{esc(row['verdict'])}</td></tr>" for row in curve["rows"])
        parts.append(f"<h3>{esc(task)}</h3><p><b>{esc(curve['crossover'])}</b> (on {esc(metric)}).</p>"
                     f"<table><tr><th>labels</th>{head}<th>gain ({esc(metric)})</th><th>verdict</th></tr>{body}"
                     "</table>")
    if curves:
        parts.append(fraction_figure(curves).to_html(full_html=False, include_plotlyjs=False))
    return "".join(parts)


def label_fraction(cfg: JbotConfig | None) -> Study:
    fractions = (cfg.evaluate if cfg is not None else EvaluateConfig()).label_fractions
    return Study("label-fraction", "The label-fraction study", _fraction_steps(fractions),
                 _fraction_claims(fractions), "5class, tqg", fraction_section, fraction_html,
                 "pre-trained - from scratch")


# ------------------------------------------------------------------------------------------------ the registry


def paper(cfg: JbotConfig | None = None) -> Study:
    """The paper's protocol; read from ``reproduce``'s tables when asked for (a test may extend them)."""
    return Study("paper", "The paper's claims", r.STEPS, r.CLAIMS, "5class, tqg, qg")


def ablation(cfg: JbotConfig | None = None) -> Study:
    """The full method and the variants of ``evaluate.ablation_variants`` (q+g anomaly steps with
    ``evaluate.ablation_anomaly``)."""
    ev = cfg.evaluate if cfg is not None else EvaluateConfig()
    variants = tuple(v for v in VARIANTS if v.name in ev.ablation_variants)
    return Study("ablation", "The ablation study", _ablation_steps(variants, ev.ablation_anomaly),
                 tuple(_without(v) for v in variants if v is not FULL),
                 "5class, qg" if ev.ablation_anomaly else "5class", ablation_section, ablation_html,
                 "full method - variant")


# a study from the resolved config (None: its defaults; a report reads only its name and HTML)
STUDIES: dict[str, Callable[[JbotConfig | None], Study]] = {
    "paper": paper, "ablation": ablation, "label-fraction": label_fraction}


def study(name: str, cfg: JbotConfig | None = None) -> Study:
    if name not in STUDIES:
        raise ReproduceError(f"--study is one of {', '.join(STUDIES)}, not {name!r}")
    return STUDIES[name](cfg)
