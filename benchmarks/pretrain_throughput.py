"""Throughput of full jBOT pre-training steps, fine-tuning steps and embedding on device-resident data.

A pre-training step is everything: two augmented views, pT-aware masking, teacher forward, student forward and
backward, the three losses, AdamW, the EMA teacher update and the centres. Reported: jets/s as the median over
timed steps after warm-up (synchronised), peak device memory (CUDA; the process's peak RSS on the CPU). With
``--rounds N`` the whole grid runs N times, its settings alternating, and each row reports the median over rounds
(a shared machine's speed drifts: alternation spreads the drift over every setting); ``--interleave`` instead
builds every setting's pre-training step in one process and times them step by step in turn (the fairest
comparison on a shared machine). Imports only the engine (no mlflow, no optuna).

    python benchmarks/pretrain_throughput.py --device cpu --sizes S,B --batches 1024 --threads 2 --rounds 3
    python benchmarks/pretrain_throughput.py --device cpu --sizes B --threads 2 --interleave --steps 30 \
        --heads all,selected --compile off,on
    python benchmarks/pretrain_throughput.py --device cuda --batches 1024,8192 --precisions fp32,bf16 \
        --compile off,on --cuda-graphs off,on
Writes benchmarks/results/throughput-<device>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from jbot.config import JbotConfig, load_config
from jbot.data.splits import Part, Split
from jbot.model.registry import build_encoder
from jbot.train.device import autocast
from jbot.train.finetune import JetClassifier
from jbot.train.pretrain import Pretrainer

SIZES = {"S": "jbot-s", "B": "jbot-b"}
ROOT = Path(__file__).resolve().parent.parent


def synthetic_jets(n: int, seed: int = 0) -> np.ndarray:
    """JetNet-like jets: 10-30 valid constituents, pT-sorted fractions, eta/phi spread ~0.1."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 30, 4), np.float32)
    mult = rng.integers(10, 31, n)
    valid = np.arange(30)[None, :] < mult[:, None]
    pt = -np.sort(-rng.exponential(1.0, (n, 30)), axis=1) * valid
    x[..., 0] = rng.normal(0, 0.1, (n, 30)) * valid
    x[..., 1] = rng.normal(0, 0.1, (n, 30)) * valid
    x[..., 2] = pt / pt.sum(1, keepdims=True)
    x[..., 3] = valid
    return x


def synthetic_split(x: np.ndarray) -> Split:
    """``x`` as the training set of a one-class split without validation or test jets (no k-NN monitor)."""
    part = Part(x, np.zeros((len(x), 4), np.float32), np.zeros(len(x), np.int64), np.zeros(len(x), np.int64))
    return Split("5class", part, part.subset(np.arange(0)), part.subset(np.arange(0)), ("q",), 0, "bench")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, warmup: int, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_trainer(cfg: JbotConfig, batch: int,
                  out_dir: str | Path = "/tmp/jbot-bench") -> tuple[Pretrainer, torch.Tensor]:
    """A trainer on ``2 * batch`` synthetic jets (no validation) and one batch of them on its device."""
    x = synthetic_jets(batch * 2)
    trainer = Pretrainer(cfg, synthetic_split(x), out_dir)
    return trainer, torch.as_tensor(x[:batch], device=trainer.device)


def pretrain_step(cfg: JbotConfig, batch: int, heads: str = "auto") -> Callable[[], object]:
    """One pre-training step per call on a fixed batch. ``heads``: auto (the device's default), all (the
    projection head on every particle token, as before it ran only on the tokens a loss reads) or selected."""
    trainer, xb = bench_trainer(cfg, batch)
    if heads != "auto":
        trainer.method.static = heads == "all"
    counter = itertools.count()
    return lambda: trainer.train_step(xb, next(counter) % len(trainer.lr))


def bench_pretrain(cfg: JbotConfig, batch: int, device: torch.device, warmup: int, steps: int,
                   heads: str = "auto") -> float:
    return batch / statistics.median(_timed(pretrain_step(cfg, batch, heads), device, warmup, steps))


def interleaved(steps_by_key: dict[tuple, Callable[[], object]], device: torch.device, warmup: int,
                steps: int) -> dict[tuple, list[float]]:
    """Every setting's step in turn, ``steps`` times: a drifting machine slows them all alike."""
    for step in steps_by_key.values():
        for _ in range(warmup):
            step()
    times: dict[tuple, list[float]] = {key: [] for key in steps_by_key}
    for _ in range(steps):
        for key, step in steps_by_key.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return times


def bench_finetune(cfg: JbotConfig, batch: int, device: torch.device, warmup: int, steps: int) -> float:
    model = JetClassifier(build_encoder(cfg.model), 5).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    xb = torch.as_tensor(synthetic_jets(batch), device=device)
    yb = torch.randint(0, 5, (batch,), device=device)

    def step() -> None:
        with autocast(device, cfg.runtime.precision):
            loss = torch.nn.functional.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / statistics.median(_timed(step, device, warmup, steps))


def bench_embed(cfg: JbotConfig, batch: int, device: torch.device, warmup: int, steps: int) -> float:
    enc = build_encoder(cfg.model).to(device).eval()
    xb = torch.as_tensor(synthetic_jets(batch), device=device)

    @torch.no_grad()
    def step() -> None:
        with autocast(device, cfg.runtime.precision):
            enc(xb)

    return batch / statistics.median(_timed(step, device, warmup, steps))


def bench_config(size: str, batch: int, precision: str, comp: str, graphs: str, device: torch.device) -> JbotConfig:
    return load_config(SIZES[size], [f"runtime.device={device.type}", f"runtime.precision={precision}",
                                     f"runtime.compile={comp}", f"runtime.cuda_graphs={graphs}",
                                     f"pretrain.batch_size={batch}"])


def measure(size: str, batch: int, precision: str, comp: str, graphs: str, heads: str, device: torch.device,
            args: argparse.Namespace) -> dict[str, object]:
    cfg = bench_config(size, batch, precision, comp, graphs, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row: dict[str, object] = {
        "size": size, "batch": batch, "precision": precision, "compile": comp, "cuda_graphs": graphs, "heads": heads,
        "pretrain_jets_per_s": bench_pretrain(cfg, batch, device, args.warmup, args.steps, heads)}
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if not args.pretrain_only:
        row["finetune_jets_per_s"] = bench_finetune(cfg, batch, device, args.warmup, args.steps)
        row["embed_jets_per_s"] = bench_embed(cfg, max(batch, 8192), device, args.warmup, args.steps)
    return row


def label(key: tuple) -> str:
    size, batch, precision, comp, graphs, heads = key
    return f"jBOT-{size} batch {batch:5d} {precision} compile={comp} graphs={graphs} heads={heads}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="S,B")
    p.add_argument("--batches", default="1024")
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--compile", default="off")
    p.add_argument("--cuda-graphs", default="off", help="off,on: CUDA graphs of the whole pre-training step")
    p.add_argument("--heads", default="auto", help="auto,all,selected: projection heads on every particle token "
                                                   "or on those a loss reads (auto: the device's default)")
    p.add_argument("--interleave", action="store_true", help="pre-training steps of every setting in turn, "
                                                             "in one process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1, help="repeat the grid, alternating; rows report the median")
    p.add_argument("--pretrain-only", action="store_true", help="skip the fine-tuning and embedding timings")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    grid = list(itertools.product(args.sizes.split(","), map(int, args.batches.split(",")),
                                  args.precisions.split(","), args.compile.split(","), args.cuda_graphs.split(","),
                                  args.heads.split(",")))
    runs: dict[tuple, list[dict[str, object]]] = {key: [] for key in grid}
    if args.interleave:
        steps = {key: pretrain_step(bench_config(*key[:5], device), key[1], key[5]) for key in grid}
        for key, times in interleaved(steps, device, args.warmup, args.steps).items():
            runs[key] = [{"size": key[0], "batch": key[1], "precision": key[2], "compile": key[3],
                          "cuda_graphs": key[4], "heads": key[5], "pretrain_jets_per_s": key[1] / t} for t in times]
    for r in range(0 if args.interleave else args.rounds):
        for key in grid:
            row = measure(*key, device, args)
            runs[key].append(row)
            print(f"round {r + 1}/{args.rounds} {label(key)}: pretrain {row['pretrain_jets_per_s']:10.0f} jets/s",
                  flush=True)
    rows = []
    for key, measured in runs.items():
        row = dict(measured[0])
        for name in [k for k in row if k.endswith("_jets_per_s")]:
            values = [float(m[name]) for m in measured]  # type: ignore[arg-type]
            row[name] = statistics.median(values)
            row[name.replace("_jets_per_s", "_samples")] = values  # per round, or per step (--interleave)
        rows.append(row)
        extra = "".join(f"  {n.split('_')[0]} {row[n]:10.0f}" for n in ("finetune_jets_per_s", "embed_jets_per_s")
                        if n in row)
        print(f"median {label(key)}: pretrain {row['pretrain_jets_per_s']:10.0f}{extra} jets/s")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    payload = {"benchmark": "pretrain_throughput", "device": args.device,
               "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": commit,
               "rounds": "interleaved steps" if args.interleave else args.rounds,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
               "rows": rows}
    out = args.out or ROOT / "benchmarks" / "results" / f"throughput-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
