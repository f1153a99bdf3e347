"""Sensitivity, mass sculpting and robustness to a contaminated reference set of several q+g encoders on the same
jets (docs/method.md §8.5): a random encoder, jbot pre-trained on q+g here (``--epochs``), any jbot checkpoints
given (``--checkpoint name=path``, e.g. a reproduce run's ``pretrain-qg``) and, with ``--keras``, the authors'
released q+g encoder. Each is scored by ``jbot anomaly``'s route (``embed_split`` + ``score_anomalies`` +
``contamination_study``) on the ``qg`` split of ``--data``.

    python benchmarks/anomaly_sculpting.py --data data/jets --epochs 12 \\
        --keras ../shared/reference/keras-checkpoints/qg_backbone_pretrain_32_4_2.weights.h5
Writes benchmarks/results/anomaly-sculpting.json. Imports only the engine (no mlflow, no optuna).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from jbot.anomaly.detect import contamination_study, embed_split, score_anomalies
from jbot.config import JbotConfig, load_config
from jbot.data.splits import Split, make_split
from jbot.model.encoder import JetEncoder
from jbot.model.registry import build_encoder
from jbot.train.checkpoint import load_model, model_from_state
from jbot.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parent.parent
SCORE = "knn"  # the score the paper's Table 4 leads with


def evaluate(encoder: JetEncoder, split: Split, cfg: JbotConfig) -> dict[str, Any]:
    start = time.perf_counter()
    embedded = embed_split(encoder, split, "test", cfg.anomaly.reference_size, cfg.anomaly.seed)
    result = score_anomalies(embedded, cfg.anomaly, n_folds=cfg.evaluate.n_folds)
    contaminated = contamination_study(encoder, split, embedded, cfg.anomaly)
    m = {**result.metrics, **contaminated.metrics}
    pick = {k.removeprefix(f"{SCORE}/"): v for k, v in m.items() if k.startswith(f"{SCORE}/")
            and any(t in k for t in ("/auc", "max_sic", "mass_rho", "mass_jsd_inv"))
            and not k.endswith(("_std", "_n_bkg", "_unresolved"))}
    return {"metrics": pick, "notes": contaminated.notes, "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reference-size", type=int, default=5000)
    p.add_argument("--checkpoint", action="append", default=[], help="name=path of a jbot checkpoint (repeatable)")
    p.add_argument("--keras", type=Path, help="the authors' qg_backbone_pretrain_32_4_2.weights.h5")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "anomaly-sculpting.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = [f"data.dir={args.data}", "data.preset=qg", f"pretrain.batch_size={args.batch}", "pretrain.knn_every=0",
            "pretrain.warmup_epochs=2", f"anomaly.reference_size={args.reference_size}", "runtime.device=cpu",
            f"pretrain.epochs={args.epochs}"]
    cfg = load_config(None, base)
    split = make_split(args.data, "qg", seed=cfg.data.seed)
    rows: dict[str, dict[str, Any]] = {}
    torch.manual_seed(0)
    rows["random"] = evaluate(build_encoder(cfg.model), split, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trained = load_model(pretrain(cfg, split, tmp).checkpoint).encoder
        rows[f"jbot q+g, {args.epochs} epochs"] = {**evaluate(trained, split, cfg),
                                                   "train_seconds": time.perf_counter() - start}
    for item in args.checkpoint:
        name, path = item.split("=", 1)
        enc = load_model(path).encoder
        rows[name] = evaluate(enc, split, cfg.model_copy(update={"model": enc.cfg}))
    if args.keras:
        from jbot.model.keras_import import import_keras

        enc = model_from_state(import_keras(args.keras)).encoder
        rows["authors' released q+g"] = evaluate(enc, split, cfg.model_copy(update={"model": enc.cfg}))
    for name, row in rows.items():
        m = row["metrics"]
        print(f"{name:28s} AUC comb {m['combined/auc']:.3f}  max SIC comb {m['combined/max_sic']:.2f}  "
              f"rho q {m.get('mass_rho/q', float('nan')):+.2f} g {m.get('mass_rho/g', float('nan')):+.2f}  "
              f"1/JSD@0.1 {m.get('mass_jsd_inv/eps_b_0.1', float('nan')):.1f}  "
              f"AUC comb at 5 % contamination {m.get('contaminated_0.05/combined/auc', float('nan')):.3f}")
    payload = {"benchmark": "anomaly_sculpting", "data": str(args.data), "score": SCORE, "epochs": args.epochs,
               "reference_size": args.reference_size, "n_train": len(split.train), "n_test": len(split.test),
               "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
