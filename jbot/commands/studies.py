"""The studies ``jbot reproduce --study`` runs, one ``STUDIES`` entry each (docs/method.md §10):

- ``paper``: the paper's protocol (``reproduce.STEPS`` and ``reproduce.CLAIMS``);
- ``ablation``: the full method and each variant (particle loss only, [CLS] loss only, no KoLeo, no masking)
  pre-trained on the same jets with the same seed, each probed on 5 classes (k-NN, linear, clustering) and
  pre-trained again on q+g for its anomaly AUC; a claim per variant ("removing X costs k-NN accuracy") judged by
  the paired bootstrap of the two probes' per-jet outputs, and the paper's load-bearing claim, that the
  combination of both losses is what clusters the jets;

A study is steps and claims built from ``reproduce``'s step factories; adding one is an entry here (and its test).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import numpy as np

from jbot.commands import reproduce as r
from jbot.commands.reproduce import Claim, Collected, Paired, ReproduceError, Step, Study, Variant

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


def _ablation_steps() -> tuple[Step, ...]:
    steps: list[Step] = []
    for v in VARIANTS:
        steps += [Step(f"pretrain-5class-{v.name}", r._pretrain("5class", v)),
                  Step(f"probe-{v.name}", r._probe("5class", f"pretrain-5class-{v.name}"), baseline=PROBE_ROWS),
                  Step(f"pretrain-qg-{v.name}", r._pretrain("qg", v)),
                  Step(f"anomaly-{v.name}", r._anomaly("qg", f"pretrain-qg-{v.name}"), baseline=(ANOMALY_ROW,))]
    return tuple(steps)


def _without(v: Variant) -> Claim:
    """Removing what ``v`` removes costs 5-class k-NN accuracy: the full method's probe above ``v``'s."""
    return Claim(f"without_{v.name}", ("probe-full", f"probe-{v.name}"), r._above_scratch(
        "test/knn_acc", f"removing {v.removes} ({v.name}) costs {{gap:+.3f}} 5-class k-NN accuracy "
                        "(beyond the fold std {margin:.3f} when positive and larger)"),
        Paired("accuracy", 0.0, f"removing {v.removes} ({v.name}) costs {{value}} 5-class k-NN accuracy"))


def _value(metrics: dict[str, dict[str, float]], step: str, key: str) -> tuple[float, float]:
    m = metrics.get(step, {})
    return m.get(key, float("nan")), m.get(f"{key}_std", float("nan"))


def ablation_section(got: Collected) -> dict[str, Any]:
    """The table (a row per variant: its probes, clustering, anomaly AUC, final health and what removing it costs),
    the paper's claim on the two single-loss variants, and the variants' t-SNE maps (``_maps``, not in the JSON)."""
    from jbot.commands.probe import MAP_POINTS

    claims = {c["name"]: c for c in got.claims}
    full_knn, full_std = _value(got.metrics, "probe-full", "test/knn_acc")
    rows, maps = [], {}
    for v in VARIANTS:
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
    combination = {
        "name": "combination", "holds": holds,
        "within_error": holds and any(c.get("within_error") for c in single),
        "text": "the paper's claim, that the combination of particle- and jet-level distillation is what clusters "
                "the jets: the full method above both single-loss variants in 5-class k-NN accuracy ("
                + "; ".join(f"{c['name'].removeprefix('without_')}: {r.verdict(c)}" for c in single) + ")"}
    return {"claims": [combination], "ablation": rows, "_maps": maps}


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def ablation_html(summary: dict[str, Any]) -> str:
    from jbot.plots import maps_side_by_side

    esc = html.escape

    def pm(pair: Any) -> str:
        value, std = pair
        return f"{_num(value)} ± {_num(std)}"

    head = ("<tr><th>variant</th><th>removes</th><th>k-NN acc</th><th>cost vs full</th><th>beyond fold std</th>"
            "<th>paired bootstrap</th><th>linear acc</th><th>purity</th><th>ARI</th><th>NMI</th>"
            "<th>q+g anomaly AUC (k-NN, combined)</th><th>[CLS] rank</th><th>teacher occupancy</th></tr>")
    body = "".join(
        f"<tr><td>{esc(row['variant'])}</td><td>{esc(row['removes'])}</td><td>{pm(row['knn_acc'])}</td>"
        + (f"<td>{_num(row['cost'])}" + (f" (SE {_num(row['se'])})" if row.get("se") is not None else "")
           + f"</td><td>{'yes' if row['beyond_std'] else 'no'}</td><td>{esc(row['verdict'])}</td>"
           if "cost" in row else "<td>-</td><td>-</td><td>-</td>")
        + f"<td>{pm(row['linear_acc'])}</td><td>{_num(row['purity'][0])}</td><td>{_num(row['ari'][0])}</td>"
        f"<td>{_num(row['nmi'][0])}</td><td>{pm(row['anomaly_auc'])}</td><td>{_num(row['cls_rank'], 2)}</td>"
        f"<td>{_num(row['teacher_occupancy'], 2)}</td></tr>" for row in summary.get("ablation", []))
    maps = summary.get("_maps") or {}
    figure = "" if not maps else maps_side_by_side(
        maps, "frozen [CLS] of the test jets per variant (t-SNE)").to_html(full_html=False, include_plotlyjs=False)
    return (f"<h2>Ablation</h2><p>Each variant is the full method with one piece removed, pre-trained on the same "
            "jets with the same seed and settings; the cost is the full method's 5-class k-NN accuracy minus the "
            "variant's (positive: removing it hurts), beside the larger of the two fold stds and the verdict of the "
            "paired bootstrap of the two probes on the same test jets. [CLS] rank and teacher occupancy are the "
            "last pre-training epoch's representation health (docs/method.md §5.7).</p>"
            f"<table>{head}{body}</table>{figure}")


def ablation() -> Study:
    return Study("ablation", "The ablation study", _ablation_steps(), tuple(_without(v) for v in VARIANTS[1:]),
                 "5class, qg", ablation_section, ablation_html)


# ------------------------------------------------------------------------------------------------ the registry


def paper() -> Study:
    """The paper's protocol; read from ``reproduce``'s tables when asked for (a test may extend them)."""
    return Study("paper", "The paper's claims", r.STEPS, r.CLAIMS, "5class, tqg, qg")


STUDIES: dict[str, Callable[[], Study]] = {"paper": paper, "ablation": ablation}


def study(name: str) -> Study:
    if name not in STUDIES:
        raise ReproduceError(f"--study is one of {', '.join(STUDIES)}, not {name!r}")
    return STUDIES[name]()
