"""k-NN anomaly scoring at scale: 100,000 test vectors against a 260,000-vector reference set in D = 32 (k = 30),
jbot's chunked torch search vs scikit-learn's NearestNeighbors, each in its own process (wall time, peak RSS).

    python benchmarks/knn_anomaly.py [--n-test 100000] [--n-ref 260000] [--dim 32] [--threads 2]
Writes benchmarks/results/knn_anomaly.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def data(n_test: int, n_ref: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(n_ref, dim)).astype(np.float32)
    test = rng.normal(size=(n_test, dim)).astype(np.float32)
    return test / np.linalg.norm(test, axis=1, keepdims=True), ref / np.linalg.norm(ref, axis=1, keepdims=True)


def child(method: str, args: argparse.Namespace) -> None:
    if method == "jbot":
        import torch

        torch.set_num_threads(args.threads)
        from jbot.anomaly.scores import KnnScore
    else:
        from sklearn.neighbors import NearestNeighbors
    test, ref = data(args.n_test, args.n_ref, args.dim)
    import psutil

    base_rss = psutil.Process().memory_info().rss / 1024  # KiB, current: libraries imported, inputs made
    start = time.perf_counter()
    if method == "jbot":
        scores = KnnScore(args.k, args.chunk_size).fit(ref).score(test)
    else:
        dist, _ = NearestNeighbors(n_neighbors=args.k, n_jobs=args.threads).fit(ref).kneighbors(test)
        scores = dist.mean(1)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"method": method, "seconds": elapsed, "peak_rss_mb": peak / 1024,
                      "rss_above_inputs_mb": (peak - base_rss) / 1024, "checksum": float(np.sum(scores))}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-test", type=int, default=100_000)
    p.add_argument("--n-ref", type=int, default=260_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the median is reported")
    p.add_argument("--child", choices=["jbot", "sklearn"])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "knn_anomaly.json")
    args = p.parse_args()
    if args.child:
        child(args.child, args)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    runs: dict[str, list[dict]] = {"jbot": [], "sklearn": []}
    for repeat in range(args.repeats):  # alternate, so both see the same background load
        for method in ("jbot", "sklearn"):
            cmd = [sys.executable, __file__, "--child", method] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "out", "repeats")]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
            last = runs[method][-1]
            print(f"[{repeat + 1}/{args.repeats}] {method:8s} {last['seconds']:8.1f} s   peak RSS "
                  f"{last['peak_rss_mb']:8.0f} MB ({last['rss_above_inputs_mb']:.0f} MB above libraries + inputs)")
    results = []
    for method, rs in runs.items():
        secs = sorted(r["seconds"] for r in rs)
        results.append({"method": method, "seconds_median": secs[len(secs) // 2], "seconds_min": secs[0],
                        "seconds_all": secs, "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                        "rss_above_inputs_mb": max(r["rss_above_inputs_mb"] for r in rs),
                        "checksum": rs[0]["checksum"]})
        print(f"{method:8s} median {results[-1]['seconds_median']:6.1f} s  min {secs[0]:6.1f} s  peak RSS "
              f"{results[-1]['peak_rss_mb']:.0f} MB ({results[-1]['rss_above_inputs_mb']:.0f} MB working memory)")
    agree = abs(results[0]["checksum"] - results[1]["checksum"]) / abs(results[1]["checksum"]) < 1e-4
    payload = {"benchmark": "knn_anomaly", "n_test": args.n_test, "n_ref": args.n_ref, "dim": args.dim, "k": args.k,
               "chunk_size": args.chunk_size, "threads": args.threads, "machine": platform.processor() or
               platform.machine(), "cpu_count": os.cpu_count(), "results": results, "scores_agree": agree}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"scores agree: {agree}; wrote {args.out}")


if __name__ == "__main__":
    main()
