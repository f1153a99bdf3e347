"""Anomaly detection with a frozen encoder pre-trained on background (docs/method.md §8): references, scores, metrics.

The classes come from the split's preset (``jbot.data.presets.groups``): for JetNet's qg preset, background = q, g
(origin 0, 1) and signals = W, Z, t (origin 2, 3, 4); for JetClass, QCD and the nine others. Metrics per signal
against all background and for every signal combined: AUC and TPR at FPR = 1e-1, 1e-2, 1e-3, each with a std over
stratified folds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from jbot.anomaly.scores import AnomalyScore, l2_normalise, make_score, make_scores
from jbot.anomaly.sculpting import has_mass, max_sic, sculpting_metrics
from jbot.config import AnomalyConfig
from jbot.data.jetnet import DataError
from jbot.data.presets import QG_GROUPS, Groups, groups
from jbot.data.splits import Part, Split
from jbot.evaluate.embed import embed
from jbot.evaluate.metrics import auc, eps_s_at_eps_b, fold_std, mark_working_point
from jbot.model.encoder import JetEncoder

FPR_TARGETS = (0.1, 0.01, 0.001)


def _auc_on(s: np.ndarray, sig: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda i: auc(sig[i], s[i])


def _tpr_on(s: np.ndarray, sig: np.ndarray, fpr: float) -> Callable[[np.ndarray], float]:
    return lambda i: eps_s_at_eps_b(sig[i], s[i], fpr)


def group_masks(origin: np.ndarray, classes: Groups = QG_GROUPS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The background mask and each column's signal mask (every signal, then ``combined``)."""
    signals = {name: np.isin(origin, list(o)) for name, o in classes.signals}
    combined = np.isin(origin, [i for _, o in classes.signals for i in o])
    return np.isin(origin, list(classes.background)), {**signals, "combined": combined}


def signal_metrics(scores: np.ndarray, origin: np.ndarray, n_folds: int = 10, seed: int = 0,
                   classes: Groups = QG_GROUPS) -> dict[str, float]:
    """``{signal}/auc``, ``{signal}/tpr_at_fpr_{f}`` and their ``_std`` for every signal (W, Z, t) and
    ``combined``."""
    background, masks = group_masks(origin, classes)
    out: dict[str, float] = {}
    for name, signal in masks.items():
        keep = background | signal
        if not signal.any():
            continue
        s, sig, strat = scores[keep], signal[keep], origin[keep]
        named: dict[str, Callable[[np.ndarray], float]] = {"auc": _auc_on(s, sig)}
        for f in FPR_TARGETS:
            named[f"tpr_at_fpr_{f:g}"] = _tpr_on(s, sig, f)
        everything = np.arange(len(s))
        for key, fn in named.items():
            out[f"{name}/{key}"] = fn(everything)
            out[f"{name}/{key}_std"] = fold_std(fn, strat, n_folds, seed)
        out[f"{name}/max_sic"] = max_sic(sig, s)
        out[f"{name}/n_signal"], out[f"{name}/n_background"] = float(sig.sum()), float((~sig).sum())
        for f in FPR_TARGETS:
            mark_working_point(out, f"{name}/tpr_at_fpr_{f:g}", int((~sig).sum()), f)
    return out


@dataclass
class AnomalyResult:
    metrics: dict[str, float]  # "{score}/{signal}/{metric}"
    scores: dict[str, np.ndarray]  # score name -> test scores
    origin: np.ndarray
    test_embedding: np.ndarray
    reference_size: int
    extra: dict[str, str] = field(default_factory=dict)
    classes: Groups = QG_GROUPS  # background and signals by origin
    mass: np.ndarray | None = None  # the test jets' mass, when the data has one


def reference_order(n_train: int, seed: int) -> np.ndarray:
    """The order in which background training jets join the reference set: R of size k is the first k."""
    return np.random.default_rng(seed).permutation(n_train)


def reference_set(train: Part, size: int, seed: int) -> Part:
    """The reference set R: ``size`` background training jets drawn by ``reference_order``, in file order. The
    anomaly sweep draws its references the same way, so tuning and the report score against the same jets."""
    return train.subset(np.sort(reference_order(len(train), seed)[:size]))


def evaluate_scores(scores: list[AnomalyScore], ref_emb: np.ndarray, ref_labels: np.ndarray, test_emb: np.ndarray,
                    origin: np.ndarray, n_folds: int, seed: int = 0, classes: Groups = QG_GROUPS,
                    mass: np.ndarray | None = None, decorrelation: float = 1.0
                    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Fit and evaluate each score: its signal metrics and, with a usable jet ``mass`` of the evaluated jets, its
    mass sculpting (``anomaly.sculpting``) and ``combined/auc_decorrelated`` = combined AUC - ``decorrelation`` x
    the largest |ρ(score, mass)| over the background classes."""
    metrics: dict[str, float] = {}
    values: dict[str, np.ndarray] = {}
    for score in scores:
        score.fit(ref_emb, ref_labels)
        values[score.name] = score.score(test_emb)
        for key, v in signal_metrics(values[score.name], origin, n_folds, seed, classes).items():
            metrics[f"{score.name}/{key}"] = v
        if mass is not None and has_mass(mass):
            sculpted = sculpting_metrics(values[score.name], origin, mass, classes.background, classes.names)
            for key, v in sculpted.items():
                metrics[f"{score.name}/{key}"] = v
            rhos = [abs(v) for k, v in sculpted.items() if k.startswith("mass_rho/") and v == v]
            if rhos:  # the decorrelation-penalised objective a study may choose
                metrics[f"{score.name}/combined/auc_decorrelated"] = (
                    metrics[f"{score.name}/combined/auc"] - decorrelation * max(rhos))
    return metrics, values


@dataclass
class Embedded:
    """A q+g split's embeddings for scoring, computed once: the reference candidates (background training jets in
    ``reference_order``, L2-normalised) and the evaluation part's jets (``test``, or ``val`` for tuning)."""

    reference: np.ndarray  # (R, D), in reference order
    reference_origin: np.ndarray  # (R,)
    order: np.ndarray  # (R,) their indices in the training part
    target: np.ndarray  # (N, D)
    target_origin: np.ndarray  # (N,)
    classes: Groups = QG_GROUPS
    target_mass: np.ndarray | None = None  # (N,) the evaluated jets' mass (jet_features column 2)

    def references(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The reference set R of ``size`` jets: ``reference_set``'s jets, in its (file) order."""
        pick = np.argsort(self.order[:min(size, len(self.order))])
        return self.reference[pick], self.reference_origin[pick]


def embed_split(encoder: JetEncoder, split: Split, part: str, largest: int, seed: int,
                device: torch.device | str = "cpu") -> Embedded:
    """Embed the first ``largest`` jets of the reference order and the evaluation ``part``."""
    if split.spec is None or split.spec.split != "anomaly":
        raise ValueError(f"anomaly detection needs an anomaly split (qg, or a preset's with for_anomaly), not "
                         f"{split.preset}")
    order = reference_order(len(split.train), seed)[:largest]
    target: Part = getattr(split, part)
    ref_emb = l2_normalise(embed(encoder.to(device), split.train.x[order], device=device)[0])
    target_emb = l2_normalise(embed(encoder, target.x, device=device)[0])
    return Embedded(ref_emb, split.train.origin[order], order, target_emb, target.origin, groups(split.spec),
                    target.jet[:, 2].astype(np.float64))


def score_anomalies(embedded: Embedded, cfg: AnomalyConfig, names: list[str] | None = None,
                    n_folds: int = 10) -> AnomalyResult:
    """Fit every score (or those in ``names``) on ``cfg.reference_size`` reference jets and evaluate them: the one
    scoring route, taken by ``jbot anomaly``, the pre-training study's validation metric and each anomaly-sweep
    trial alike."""
    ref_emb, ref_origin = embedded.references(cfg.reference_size)
    chosen = make_scores(cfg, cfg.seed) if names is None else [make_score(n, cfg, cfg.seed) for n in names]
    mass = embedded.target_mass if cfg.sculpting else None
    metrics, values = evaluate_scores(chosen, ref_emb, ref_origin, embedded.target, embedded.target_origin,
                                      n_folds, cfg.seed, embedded.classes, mass, cfg.decorrelation)
    return AnomalyResult(metrics, values, embedded.target_origin, embedded.target, len(ref_emb),
                         classes=embedded.classes, mass=mass)


def require_mass(split: Split, part: str, cfg: AnomalyConfig, where: str) -> None:
    """With ``anomaly.sculpting`` on, refuse jets whose mass (jet_features column 2) cannot be used: missing (a
    format stores zeros), all zero or not finite. ``where`` names the data in the message."""
    if not cfg.sculpting:
        return
    mass = getattr(split, part).jet[:, 2]
    if has_mass(mass):
        return
    why = "is not finite for some jets" if len(mass) and np.any(mass != 0) else "is missing or all zero"
    raise DataError(f"the jet mass (jet_features column 2) of {where}'s {part} jets {why}: the mass-sculpting "
                    "metrics need it; set anomaly.sculpting=false to score without them")


@dataclass
class Contamination:
    """Every score re-fit on references with signal jets mixed in: ``metrics`` ``{score}/contaminated_{f}/{signal}/
    {auc,max_sic}`` (``combined``: all signals mixed in, scored on all), ``notes`` for fractions the validation
    split holds too few signal jets for."""

    metrics: dict[str, float]
    notes: list[str]
    fractions: tuple[float, ...]


def contamination_study(encoder: JetEncoder, split: Split, embedded: Embedded, cfg: AnomalyConfig,
                        device: torch.device | str = "cpu") -> Contamination:
    """The reference set of ``cfg.reference_size`` background jets with the fraction f of it replaced by signal
    jets drawn from the validation split (never the test jets scored), each signal alone and all mixed; each score
    re-fit and evaluated on the test jets (the contaminants carry a background label, as unlabelled data would)."""
    classes = embedded.classes
    origins = {name: list(o) for name, o in classes.signals}
    everything = [o for name in origins for o in origins[name]]
    pool = np.flatnonzero(np.isin(split.val.origin, everything))
    if not cfg.contamination:
        return Contamination({}, [], ())
    if len(pool) == 0:
        raise DataError("anomaly.contamination: the validation split holds no signal jets to contaminate the "
                        "reference set with (raise data.n_val, or set anomaly.contamination=[] to skip it)")
    pool_emb = l2_normalise(embed(encoder.to(device), split.val.x[pool], device=device)[0])
    pool_origin = split.val.origin[pool]
    ref_emb, ref_origin = embedded.references(cfg.reference_size)
    rng = np.random.default_rng(cfg.seed)
    background, masks = group_masks(embedded.target_origin, classes)
    metrics: dict[str, float] = {}
    notes: list[str] = []
    for f in cfg.contamination:
        n = max(1, int(round(f * len(ref_emb))))
        for name in (*origins, "combined"):
            take = np.flatnonzero(np.isin(pool_origin, everything if name == "combined" else origins[name]))
            if len(take) < n:
                notes.append(f"contamination {f:g} with {name}: needs {n} signal jets in the reference, the "
                             f"validation split holds {len(take)}")
                continue
            pick = rng.choice(take, n, replace=False)
            refs = np.concatenate([ref_emb[:len(ref_emb) - n], pool_emb[pick]])
            labels = np.concatenate([ref_origin[:len(ref_emb) - n],
                                     rng.choice(np.asarray(classes.background), n)])  # unlabelled: background
            keep = background | masks[name]
            for score in make_scores(cfg, cfg.seed):
                score.fit(refs, labels)
                values = score.score(embedded.target)[keep]
                sig = masks[name][keep]
                metrics[f"{score.name}/contaminated_{f:g}/{name}/auc"] = auc(sig, values)
                metrics[f"{score.name}/contaminated_{f:g}/{name}/max_sic"] = max_sic(sig, values)
    return Contamination(metrics, notes, tuple(cfg.contamination))


def run_anomaly(encoder: JetEncoder, split: Split, cfg: AnomalyConfig, device: torch.device | str = "cpu",
                part: str = "test", n_folds: int = 10, scores: list[str] | None = None) -> AnomalyResult:
    """Embed the reference set and the evaluation part (``test``, or ``val`` for tuning), compute every score
    (or those named in ``scores``)."""
    embedded = embed_split(encoder, split, part, cfg.reference_size, cfg.seed, device)
    return score_anomalies(embedded, cfg, scores, n_folds)


def validation_anomaly(encoder: JetEncoder, split: Split, cfg: AnomalyConfig, device: torch.device | str = "cpu",
                       n_folds: int = 2) -> dict[str, float]:
    """``cfg.score`` alone (the one a study tunes) on the validation split: ``{signal}/auc`` ... for W, Z, t and
    combined; what a pre-training study on the anomaly AUC optimises."""
    result = run_anomaly(encoder, split, cfg, device, part="val", n_folds=n_folds, scores=[cfg.score])
    return {k.split("/", 1)[1]: v for k, v in result.metrics.items()}
