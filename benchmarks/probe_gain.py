"""k-NN probe (k = 30) of a pre-trained encoder's frozen [CLS] against a randomly initialised encoder of the
same architecture, on the same split: what pre-training bought.

    python benchmarks/probe_gain.py --checkpoint runs/s8k/checkpoint.pt --data data/jets8k \\
        --n-train 30000 --n-val 0 --n-test 10000
Writes benchmarks/results/probe_gain.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from jbot.data.splits import make_split
from jbot.evaluate.classifiers import knn_probe
from jbot.evaluate.embed import embed
from jbot.model.encoder import JetEncoder
from jbot.model.registry import build_encoder
from jbot.train.checkpoint import load_checkpoint, load_encoder


def knn_accuracy(encoder: JetEncoder, split, k: int) -> float:  # type: ignore[no-untyped-def]
    train, _ = embed(encoder, split.train.x)
    test, _ = embed(encoder, split.test.x)
    return float((knn_probe(train, split.train.y, test, k).argmax(1) == split.test.y).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--preset", default="5class")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3, help="random-init encoders to average")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_gain.json")
    args = p.parse_args()
    split = make_split(args.data, args.preset, args.n_train, args.n_val, args.n_test)
    state = load_checkpoint(args.checkpoint)
    trained = knn_accuracy(load_encoder(args.checkpoint), split, args.k)
    encoder = load_encoder(args.checkpoint)
    randoms = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        randoms.append(knn_accuracy(build_encoder(encoder.cfg), split, args.k))
    payload = {"checkpoint": str(args.checkpoint), "epochs": state.get("epoch"), "data": str(args.data),
               "n_train": len(split.train), "n_test": len(split.test), "k": args.k, "knn_acc_pretrained": trained,
               "knn_acc_random_init": randoms, "gain": trained - float(np.mean(randoms)),
               "config": state["config"]["pretrain"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"k-NN (k={args.k}) accuracy: pre-trained {trained:.4f}, random init "
          f"{np.mean(randoms):.4f} ± {np.std(randoms):.4f} ({args.seeds} seeds), gain {payload['gain']:+.4f}")


if __name__ == "__main__":
    main()
