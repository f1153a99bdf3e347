"""Controlled comparisons of q+g-only pre-training for anomaly detection, on the same jets and budget.

Each variant pre-trains jBOT on the ``qg`` preset with the same data, seed, epochs and batch, then scores the
test split with every anomaly score. Printed and written per variant: AUC for W / Z / t / combined (k-NN score)
and what the k-NN score follows: its Spearman correlation with jet mass and with constituent multiplicity within
each class. Rows for a random encoder and, with ``--keras``, the authors' released q+g encoder give the scale.

    python benchmarks/qg_controls.py --data data/jets --epochs 12 --variants default,scale1,unmasked,nokoleo
Writes benchmarks/results/qg-controls.json. Imports only the engine (no mlflow, no optuna).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jbot.anomaly.detect import run_anomaly
from jbot.config import load_config
from jbot.data.classes import LABELS
from jbot.data.splits import make_split
from jbot.model.encoder import JetEncoder
from jbot.model.registry import build_encoder
from jbot.train.checkpoint import load_model
from jbot.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "default": [],  # feature scale (10, 10, 10, 1), padding masked, KoLeo 0.01: jbot's defaults
    "scale1": ["model.feature_scale=[1,1,1,1]"],  # the published models' input scale
    "unmasked": ["model.mask_padding=false"],  # attention sees padded slots, as the published models do
    "published": ["model.feature_scale=[1,1,1,1]", "model.mask_padding=false", "augment.smear_padded=true",
                  "augment.split_mode=truncate", "pretrain.part_norm=batch"],  # the published code's choices
    "nokoleo": ["pretrain.koleo_weight=0"],
    "long": ["__epochs_x3"],  # three times the epochs
}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def evaluate(encoder: JetEncoder, split, cfg) -> dict:  # type: ignore[no-untyped-def]
    result = run_anomaly(encoder, split, cfg.anomaly)
    knn = result.scores["knn"]
    jets, origin = split.test.jet, split.test.origin
    follows = {LABELS[c]: {"mass": spearman(knn[origin == c], jets[origin == c, 2]),
                           "multiplicity": spearman(knn[origin == c], jets[origin == c, 3])}
               for c in np.unique(origin)}
    return {"auc": {f"{s}/{g}": result.metrics[f"{s}/{g}/auc"] for s in result.scores
                    for g in ("W", "Z", "t", "combined")},
            "auc_std": {f"{s}/{g}": result.metrics[f"{s}/{g}/auc_std"] for s in result.scores
                        for g in ("W", "Z", "t", "combined")},
            "knn_score_spearman": follows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--keras", type=Path, help="the authors' qg_backbone_pretrain_32_4_2.weights.h5")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "qg-controls.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = [f"data.dir={args.data}", "data.preset=qg", f"pretrain.batch_size={args.batch}", "pretrain.knn_every=0",
            "pretrain.warmup_epochs=2", "anomaly.reference_size=5000", "runtime.device=cpu"]
    rows: dict[str, dict] = {}
    cfg = load_config(None, base + [f"pretrain.epochs={args.epochs}"])
    split = make_split(args.data, "qg", seed=cfg.data.seed)
    torch.manual_seed(0)
    rows["random"] = evaluate(build_encoder(cfg.model), split, cfg)
    if args.keras:
        from jbot.model.keras_import import import_keras

        state = import_keras(args.keras)
        enc = load_model_state(state)
        rows["authors-released"] = evaluate(enc, split, cfg.model_copy(update={"model": enc.cfg}))
    for name in args.variants.split(","):
        extra = [o for o in VARIANTS[name] if not o.startswith("__")]
        epochs = args.epochs * (3 if "__epochs_x3" in VARIANTS[name] else 1)
        vcfg = load_config(None, base + [f"pretrain.epochs={epochs}", *extra])
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = pretrain(vcfg, split, tmp)
            encoder = load_model(res.checkpoint).encoder
        rows[name] = {**evaluate(encoder, split, vcfg), "epochs": epochs, "seconds": time.perf_counter() - start,
                      "overrides": extra}
    for name, row in rows.items():
        auc = row["auc"]
        follows = row["knn_score_spearman"]
        print(f"{name:17s} k-NN AUC W {auc['knn/W']:.3f}  Z {auc['knn/Z']:.3f}  t {auc['knn/t']:.3f}  "
              f"comb {auc['knn/combined']:.3f} | rho(score, mass) q {follows['q']['mass']:+.2f} "
              f"W {follows['W']['mass']:+.2f} | rho(score, mult) q {follows['q']['multiplicity']:+.2f} "
              f"t {follows['t']['multiplicity']:+.2f}")
    payload = {"benchmark": "qg_controls", "data": str(args.data), "epochs": args.epochs, "batch": args.batch,
               "n_train": len(split.train), "n_test": len(split.test), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


def load_model_state(state: dict) -> JetEncoder:  # type: ignore[type-arg]
    from jbot.train.checkpoint import model_from_state

    return model_from_state(state).encoder


if __name__ == "__main__":
    main()
