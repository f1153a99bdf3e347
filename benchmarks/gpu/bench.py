"""The GPU run's measurements, one part per subcommand (``benchmarks/gpu/run.sh`` runs each as its own process,
time-boxed, and ``summary`` puts them together):

    bench.py env       --out DIR/env.txt
    bench.py generate  --out JETS --jets-per-class N --workers W --until T
    bench.py matrix    --out DIR/matrix.json --profile DIR/profile.txt --until T
    bench.py ddp       --out DIR/ddp.json                 (under torchrun --nproc-per-node 1)
    bench.py pretrain  --data JETS --out DIR/pretrain.json --until T
    bench.py summary   --dir DIR --parts PARTS.tsv

``--until`` is a Unix time: a part plans its work to end before it (a matrix row not started, a pre-training
stopped after an epoch), and every JSON is rewritten as each result comes in, so a part killed at its time box
still leaves what it measured. ``--device cpu --tiny`` is the dry run the test suite makes (tiny models and
sizes). Imports the engine alone (no MLflow, no Optuna): the GPU machine carries pydantic, and Pythia8 + FastJet
for ``generate``, as wheels (``prepare.sh``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(HERE.parent)]  # jbot from the checkout; the CPU benchmark's helpers

from pretrain_throughput import SIZES, bench_trainer, synthetic_jets, synthetic_split  # noqa: E402

from jbot.comm import SINGLE, Comm  # noqa: E402
from jbot.config import GenerateConfig, load_config  # noqa: E402
from jbot.data.shards import find_shards  # noqa: E402
from jbot.data.splits import make_split  # noqa: E402
from jbot.model.registry import build_encoder  # noqa: E402
from jbot.train.device import autocast  # noqa: E402
from jbot.train.graphs import WARMUP_STEPS, GraphStep  # noqa: E402
from jbot.train.pretrain import EagerStep, Pretrainer, compiled, param_groups, pretrain_step  # noqa: E402

# The targets (H100/H200): pre-training jets/s of the best setting for each (size, batch); embedding;
# the 100-epoch jBOT-B run's wall time.
TARGETS = {("B", 8192): 150_000, ("B", 1024): 120_000, ("S", 8192): 500_000}
EMBED_TARGET = 2_000_000
EMBED_BATCH = 16_384
PRETRAIN_TARGET_S = 600.0
MODES = ("graphs", "eager", "compile")  # graphs: compiled networks and losses, the whole step one CUDA graph
# --tiny: the dry run's model (a test keeps the script from rotting on a CPU)
TINY_MODEL = ["model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_proj=8"]


# ---------------------------------------------------------------------------------------------------- helpers
def write_json(path: Path, payload: dict[str, Any]) -> None:
    """In place (a temporary file beside it would be one more file under $OUT than the device tool brings back; a
    kill in the middle of these few milliseconds leaves a file ``summary`` reads as missing)."""
    path.write_text(json.dumps(payload, indent=2, default=float))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def left(until: float) -> float:
    """Seconds to the deadline (infinite without one)."""
    return until - time.time() if until else float("inf")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()


def commit() -> str:
    if os.environ.get("JBOT_COMMIT"):
        return os.environ["JBOT_COMMIT"]
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown (no git here: pass JBOT_COMMIT)"


def overrides(args: argparse.Namespace, *extra: str) -> list[str]:
    return [f"runtime.device={args.device}", *(TINY_MODEL if args.tiny else []), *extra]


def time_steps(step: Callable[[], object], batch: int, device: torch.device, warmup: int, rounds: int,
               round_s: float) -> dict[str, Any]:
    """jets/s of ``step`` (one call = one batch): ``warmup`` calls (compilation, capture; their time is reported),
    then ``rounds`` rounds of as many calls as fill about ``round_s`` seconds, synchronised at each round's ends
    only (the GPU's queue stays full, as in training). Reports the median round."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    step()
    sync(device)
    one = max(time.perf_counter() - start, 1e-6)
    n = int(min(500, max(3, round_s / one)))
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            step()
        sync(device)
        rates.append(batch * n / (time.perf_counter() - start))
    return {"jets_per_s": statistics.median(rates), "rounds": rates, "steps_per_round": n, "warmup_s": warm_s}


# ---------------------------------------------------------------------------------------------------- env
def cmd_env(args: argparse.Namespace) -> None:
    lines = [f"commit: {commit()}", f"python: {sys.version.split()[0]} ({sys.executable})",
             f"torch: {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
             f"cpus: {os.cpu_count()}"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"device: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
                     f"capability {p.major}.{p.minor}")
    else:
        lines.append("device: no CUDA device")
    for module in ("pydantic", "pythia8mc", "fastjet", "awkward", "h5py", "sklearn", "numpy"):
        try:
            lines.append(f"{module}: {getattr(__import__(module), '__version__', '?')}")
        except ImportError as exc:
            lines.append(f"{module}: missing ({exc})")
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    lines += ["", "nvidia-smi:", smi.stdout if smi else "(not found)"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))


def _quiet_worker() -> None:
    from jbot.data.generate import worker_init

    worker_init()  # as jbot data generate's workers: banners to /dev/null, Ctrl-C left to the parent
    os.nice(10)  # the GPU parts beside it keep their cores


def cmd_generate(args: argparse.Namespace) -> None:
    """``jbot data generate``'s chunks (the same seeds), taken round-robin over the classes so that a deadline
    leaves every class about as many jets; whatever is done at ``--until`` is written."""
    from jbot.data.generate import plan_chunks, require_generator, run_chunk, write_classes

    require_generator()
    cfg = GenerateConfig(jets_per_class=args.jets_per_class, workers=args.workers, seed=args.seed,
                         chunk_size=args.chunk_size)
    chunks = plan_chunks(cfg)
    by_class = [[ch for ch in chunks if ch.cls == c] for c in cfg.classes]
    order = [ch for row in itertools.zip_longest(*by_class) for ch in row if ch is not None]
    done: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    start = time.time()
    pool = mp.get_context("fork").Pool(args.workers, initializer=_quiet_worker)  # no CUDA in this process
    stopped = False
    errors: list[str] = []
    try:
        results = pool.imap_unordered(run_chunk, [(cfg, ch) for ch in order])
        for _ in order:
            wait = left(args.until)
            if wait <= 0:
                stopped = True
                break
            try:
                chunk, p, j = results.next(timeout=None if wait == float("inf") else wait)
            except mp.TimeoutError:
                stopped = True
                break
            except Exception as exc:  # noqa: BLE001 - a chunk that failed: the others still make jets
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            done[(chunk.cls, chunk.index)] = (p, j)
    finally:
        pool.terminate()
        pool.join()
    args.out.mkdir(parents=True, exist_ok=True)
    write_classes(args.out, chunks, done)
    counts = {c: sum(len(p) for (cls, _), (p, _) in done.items() if cls == c) for c in cfg.classes}
    seconds = time.time() - start
    report = {"jets": counts, "total": sum(counts.values()), "seconds": seconds, "workers": args.workers,
              "stopped_at_deadline": stopped, "jets_per_s": sum(counts.values()) / seconds, "errors": errors[:20]}
    (args.out / "generated.json").write_text(json.dumps(report, indent=2))
    if errors and not report["total"]:
        sys.exit(f"generation failed: {errors[0]}")
    print(f"generated {report['total']} jets in {seconds:.0f} s with {args.workers} workers"
          f"{' (stopped at the deadline)' if stopped else ''}: {counts}")


# ---------------------------------------------------------------------------------------------------- matrix
def groups(sizes: list[str], batches: list[int], precisions: list[str]) -> list[tuple[str, int, str]]:
    """Every (size, batch, precision): bf16 before fp32, then those with a target, jBOT-B first, larger batches
    first (a time box cuts the end of the list)."""
    all_ = [(s, b, p) for s in sizes for b in batches for p in precisions]
    return sorted(all_, key=lambda g: (g[2] != "bf16", (g[0], g[1]) not in TARGETS, g[0] != "B", -g[1]))


def mode_steps(trainer: Pretrainer, xb: torch.Tensor, device: torch.device,
               modes: list[str]) -> Iterator[tuple[str, Callable[[], object] | None]]:
    """Each mode's step on one trainer's weights and the batch ``xb``, in this order: the compiled step recorded as
    one CUDA graph (with a capturable AdamW of its own, as ``runtime.cuda_graphs`` makes it: the targets' setting,
    first); the eager step; the compiled step without the graph (the networks compiled for the graph, called with
    autocast's cache on: in bf16 torch.compile compiles them again). ``None`` for a mode this device cannot run."""
    counter = iter(range(10**9))

    def call(step: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[[], object]:
        return lambda: step(xb, next(counter) % len(trainer.lr))

    parts = trainer.parts
    fast = compiled(parts) if "graphs" in modes or "compile" in modes else parts
    if "graphs" in modes:
        if device.type != "cuda":
            yield "graphs", None
        else:
            optimizer = torch.optim.AdamW(param_groups(trainer.student, trainer.cfg.pretrain.weight_decay),
                                          lr=float(trainer.lr[0]), capturable=True)
            graphed = dataclasses.replace(fast, optimizer=optimizer)
            yield "graphs", call(GraphStep(functools.partial(pretrain_step, graphed), trainer.lr,
                                           trainer.momentum, graphed.gen, device, capture=True, required=True))
    if "eager" in modes:
        yield "eager", call(EagerStep(parts, trainer.lr, trainer.momentum))
    if "compile" in modes:
        yield "compile", call(EagerStep(fast, trainer.lr, trainer.momentum))


def profile_step(step: Callable[[], object], device: torch.device, batch: int, title: str, steps: int = 5) -> str:
    """torch.profiler over ``steps`` steps: wall time per step, device time per step, and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):
        step()
    sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    head = f"== {title}: {wall * 1e3:.2f} ms per step ({batch / wall:,.0f} jets/s)"
    if device.type != "cuda":
        return head + "\n" + events.table(sort_by="self_cpu_time_total", row_limit=25) + "\n"
    # the device's own time per step against the wall time: the host (launches, Python) or the GPU is the limit.
    # Only the device's own events (kernels, copies): an operator's row repeats its kernels' time. Kernels inside a
    # replayed graph may not be traced on every driver: check a graph's figure against its measured rate.
    name = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    on_device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                 and not getattr(e, "is_user_annotation", False)]
    busy = sum(getattr(e, name, 0) for e in on_device) / 1e6 / steps
    head += f", device busy {busy * 1e3:.2f} ms per step ({100 * busy / wall:.0f} % of the wall time)"
    return head + "\n" + events.table(sort_by=name, row_limit=25) + "\n"


def cmd_matrix(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {"benchmark": "gpu matrix", "device": device_name(device), "torch": torch.__version__,
                               "commit": commit(), "tiny": args.tiny, "rows": [], "embed": [], "skipped": []}
    profiles: list[str] = []
    modes = args.modes.split(",")
    plan = groups(args.sizes.split(","), [int(b) for b in args.batches.split(",")], args.precisions.split(","))
    compile_s = 10.0 if args.tiny else 60.0  # a first guess at one compilation and capture; then the measured
    generated = Path(args.jets) / "generated.json"  # written when generation ends
    for n, (size, batch, precision) in enumerate(plan):
        if n == min(3, len(plan)) and left(args.until) > 30:  # the embedding after the groups with targets
            measure_embed(args, device, payload)
        if left(args.until) < 20:
            payload["skipped"].append({"size": size, "batch": batch, "precision": precision, "why": "time box"})
            continue
        cfg = load_config(SIZES[size], overrides(args, f"runtime.precision={precision}", "runtime.compile=off",
                                                 "runtime.cuda_graphs=off", f"pretrain.batch_size={batch}"))
        torch._dynamo.reset()  # each group compiles for its own shapes (no dynamic shapes, no cache limit)
        trainer, xb = bench_trainer(cfg, batch, args.scratch)
        target = TARGETS.get((size, batch))
        for mode, step in mode_steps(trainer, xb, device, modes):
            # as time allows: a compiled mode may compile (in bf16 the plain compiled step compiles again)
            if mode != "eager" and left(args.until) - 20 < compile_s:
                payload["skipped"].append({"size": size, "batch": batch, "precision": precision, "mode": mode,
                                           "why": "time box"})
                continue
            row: dict[str, Any] = {"size": size, "batch": batch, "precision": precision, "mode": mode}
            if step is None:
                row["status"] = "skipped: CUDA graphs need a CUDA device"
            else:
                reset_peak(device)
                try:
                    row.update(time_steps(step, batch, device, max(args.warmup, WARMUP_STEPS + 2), args.rounds,
                                          args.round_s))
                    row["peak_memory_gb"] = peak_gb(device)
                    row["status"] = "ok"
                    row["beside_generation"] = args.jets != "none" and not generated.exists()
                    if mode == "graphs":  # a whole compilation and the capture: the next groups' estimate
                        compile_s = max(20.0, row["warmup_s"])
                except Exception as exc:  # noqa: BLE001 - one setting's failure is a result; the others go on
                    row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:500]}"
            payload["rows"].append(row)
            write_json(args.out, payload)
            print(f"jBOT-{size} batch {batch:5d} {precision} {mode:8s} "
                  + (f"{row['jets_per_s']:12,.0f} jets/s" if row["status"] == "ok" else row["status"]), flush=True)
            # a compiled mode that misses its target, profiled now (its memory is let go before the next mode):
            # the compiled step shows its kernels, the graph (whose replay may hide them) its device time against
            # the wall time, which says whether the host or the device is the limit
            missed = target and row["status"] == "ok" and row["jets_per_s"] < target
            if step is not None and mode != "eager" and (args.profile_all or missed) and left(args.until) > 15:
                profiles.append(profile_step(step, device, batch, f"jBOT-{size} batch {batch} {precision} {mode} "
                                             f"({row.get('jets_per_s', 0):,.0f} jets/s, target {target or '-'})"))
                args.profile.write_text("".join(profiles))
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del trainer

    if not payload["embed"] and left(args.until) > 10:
        measure_embed(args, device, payload)
    payload["verdicts"] = matrix_verdicts(payload)
    write_json(args.out, payload)
    if not profiles:
        args.profile.write_text("no compiled setting missed its target: nothing profiled\n")


def measure_embed(args: argparse.Namespace, device: torch.device, payload: dict[str, Any]) -> None:
    """jBOT-S [CLS] embedding: the encoder on device-resident jets (bf16 autocast, eager and compiled), and the
    product's inference loop (``jbot.evaluate.embed.infer``: from numpy, fp32, as every command embeds)."""
    from jbot.evaluate.embed import infer

    batch = 512 if args.tiny else EMBED_BATCH
    cfg = load_config("jbot-s", overrides(args))
    encoder = build_encoder(cfg.model).to(device).eval()
    x = synthetic_jets(batch * 4)
    xb = torch.as_tensor(x[:batch], device=device)

    def forward(module: Callable[[torch.Tensor], object], precision: str) -> Callable[[], object]:
        @torch.no_grad()
        def step() -> None:
            with autocast(device, precision):
                module(xb)
        return step

    runs: list[tuple[str, Callable[[], object]]] = [("encoder bf16 eager", forward(encoder, "bf16")),
                                                     ("encoder fp32 eager", forward(encoder, "fp32"))]
    if left(args.until) > 90 and not args.tiny:
        runs.append(("encoder bf16 compiled", forward(torch.compile(encoder), "bf16")))
    runs.append(("jbot infer (numpy in, fp32)", lambda: infer(encoder, x, batch_size=batch, device=device)))
    for name, step in runs:
        n = batch * 4 if name.startswith("jbot infer") else batch
        row: dict[str, Any] = {"name": name, "batch": batch}
        try:
            reset_peak(device)
            row.update(time_steps(step, n, device, 3, args.rounds, args.round_s), peak_memory_gb=peak_gb(device))
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001
            row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:500]}"
        payload["embed"].append(row)
        write_json(args.out, payload)
        print(f"embedding {name}: " + (f"{row['jets_per_s']:12,.0f} jets/s" if row["status"] == "ok"
                                       else row["status"]), flush=True)


def matrix_verdicts(payload: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    ok = [r for r in payload["rows"] if r.get("status") == "ok"]
    for (size, batch), target in TARGETS.items():
        rows = [r for r in ok if r["size"] == size and r["batch"] == batch]
        best = max(rows, key=lambda r: r["jets_per_s"], default=None)
        setting = f"{best['precision']} {best['mode']}" if best else None
        if best and not any(r["mode"] == "graphs" for r in rows):
            setting = f"{setting}; compile + graph not measured"
        out.append({"what": f"jBOT-{size} pre-training, batch {batch}", "target": target,
                    "measured": best["jets_per_s"] if best else None, "setting": setting,
                    "met": bool(best and best["jets_per_s"] >= target)})
    emb = [r for r in payload["embed"] if r.get("status") == "ok" and r["name"].startswith("encoder bf16")]
    best = max(emb, key=lambda r: r["jets_per_s"], default=None)
    out.append({"what": f"jBOT-S embedding, bf16, batch {EMBED_BATCH}", "target": EMBED_TARGET,
                "measured": best["jets_per_s"] if best else None, "setting": best["name"] if best else None,
                "met": bool(best and best["jets_per_s"] >= EMBED_TARGET)})
    return out


# ---------------------------------------------------------------------------------------------------- ddp
@dataclasses.dataclass(frozen=True)
class OneRankGroup(Comm):
    """A process group of one that still takes the data-parallel path (DDP's wrapper, the collectives), which
    ``Comm`` skips for one process: torchrun --nproc-per-node 1 on one GPU exercises the multi-GPU code."""

    @property
    def active(self) -> bool:
        return True


def cmd_ddp(args: argparse.Namespace) -> None:
    """Two epochs in one plain process, then the same under a torchrun process group (NCCL on CUDA, gloo on the
    CPU) through DDP and the collectives: the losses must agree."""
    import torch.distributed as dist

    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    batch = 64 if args.tiny else 1024
    split = synthetic_split(synthetic_jets(batch * 8, seed=3))
    payload: dict[str, Any] = {"benchmark": "gpu ddp", "device": device_name(device), "commit": commit(),
                               "world_size_env": os.environ.get("WORLD_SIZE"), "runs": []}
    backend = "nccl" if device.type == "cuda" else "gloo"

    def run(comm: Comm, compile: str) -> dict[str, Any]:
        cfg = load_config("jbot-b", overrides(args, "runtime.precision=fp32", f"runtime.compile={compile}",
                                              "runtime.cuda_graphs=off", "pretrain.epochs=2",
                                              f"pretrain.batch_size={batch}", "pretrain.warmup_epochs=0.5"))
        start = time.perf_counter()
        trainer = Pretrainer(cfg, split, Path(args.scratch) / f"ddp-{comm.active}-{compile}", comm=comm,
                             device=device)
        history = trainer.fit().history
        return {"ddp": isinstance(trainer.parts.student_forward, torch.nn.parallel.DistributedDataParallel),
                "compile": compile, "seconds": time.perf_counter() - start,
                "loss": history["train/loss"], "loss_part": history["train/loss_part"],
                "loss_cls": history["train/loss_cls"], "jets_per_s": history["system/jets_per_s"]}

    single = run(SINGLE, "off")
    payload["runs"].append({"name": "one process", **single})
    write_json(args.out, payload)
    dist.init_process_group(backend)
    try:
        payload["backend"] = dist.get_backend()
        for compile in ["off"] + ([] if args.tiny or device.type != "cuda" else ["on"]):
            try:
                result = run(OneRankGroup(dist.get_rank(), dist.get_world_size()), compile)
                diff = max(abs(a - b) / abs(b) for key in ("loss", "loss_part", "loss_cls")
                           for a, b in zip(result[key], single[key], strict=True))
                result.update(max_rel_diff=diff, matches=diff < 1e-3, status="ok")
            except Exception as exc:  # noqa: BLE001
                result = {"compile": compile, "status": f"failed: {type(exc).__name__}: {str(exc)[:500]}"}
            payload["runs"].append({"name": f"torchrun, {backend}, DDP", **result})
            write_json(args.out, payload)
            print(f"DDP ({backend}, compile {compile}): " + (
                f"losses {result['loss']} vs one process {single['loss']}, max relative difference "
                f"{result['max_rel_diff']:.2e}" if result["status"] == "ok" else result["status"]), flush=True)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- pretrain
def cmd_pretrain(args: argparse.Namespace) -> None:
    """jBOT-B pre-training with the CUDA defaults (bf16, compile, graphs: auto) on the generated jets, stopped
    after the epoch that would run past ``--until``; the k-NN probe of its [CLS] (and of the same encoder before
    training, the random-init baseline)."""
    device = torch.device(args.device)
    start = time.time()
    payload: dict[str, Any] = {"benchmark": "gpu pretrain", "device": device_name(device), "commit": commit(),
                               "size": args.size, "batch": args.batch, "epochs_planned": args.epochs, "epochs": []}
    counts = {s.path.stem: s.n for s in find_shards(args.data)}  # {class}.hdf5, rows from the metadata
    per_class = min(counts.values())
    n_val, n_test = (100, 50) if args.tiny else (5_000, 500)  # the k-NN monitor's queries; a token test set
    n_train = per_class * len(counts) - n_val - n_test
    cfg = load_config(SIZES[args.size], overrides(
        args, f"data.dir={args.data}", f"pretrain.epochs={args.epochs}", f"pretrain.batch_size={args.batch}",
        f"pretrain.knn_every={max(1, args.epochs // 4)}", f"pretrain.knn_val_size={min(5000, n_val)}",
        *args.set))
    split = make_split(args.data, "5class", n_train=n_train, n_val=n_val, n_test=n_test, seed=cfg.data.seed)
    trainer = Pretrainer(cfg, split, Path(args.scratch) / "pretrain")
    generated = args.data / "generated.json"  # the generate part's report, when it made these jets
    payload["generation"] = json.loads(generated.read_text()) if generated.exists() else None
    payload.update(jets_per_class=counts, n_train=len(split.train), n_val=len(split.val),
                   step_kind=type(trainer.step_fn).__name__, runtime=cfg.runtime.model_dump())
    payload["knn_random_init"] = trainer.knn_accuracy()
    payload["setup_s"] = time.time() - start
    write_json(args.out, payload)
    fit_start = time.time()
    margin = 15.0 if not args.tiny else 2.0  # the k-NN probe at the end

    def on_epoch(report: Any) -> bool:
        now = time.time()
        m = report.metrics
        payload["epochs"].append({"epoch": report.epoch, "seconds": m["system/epoch_seconds"],
                                  "jets_per_s": m["system/jets_per_s"], "loss": m["train/loss"],
                                  "knn": m.get("val/knn_acc")})
        payload["fit_s"] = now - fit_start
        write_json(args.out, payload)
        last = max(e["seconds"] for e in payload["epochs"][-3:])
        return bool(args.until) and now + 1.2 * last + margin > args.until

    result = trainer.fit(on_epoch=on_epoch)
    payload["fit_s"] = result.seconds
    payload["epochs_done"] = result.epochs
    payload["knn"] = result.knn_acc if result.epochs == args.epochs else trainer.knn_accuracy()
    steady = [e["seconds"] for e in payload["epochs"][1:]] or [e["seconds"] for e in payload["epochs"]]
    first = payload["epochs"][0]["seconds"]
    payload["epoch_s_median"] = statistics.median(steady)
    payload["jets_per_s_median"] = statistics.median(e["jets_per_s"] for e in payload["epochs"][1:] or
                                                     payload["epochs"])
    # what 100 epochs take: the first epoch (compilation, capture) + the rest at the steady epochs' pace, plus
    # the measured time spent outside the epochs (k-NN probes, checkpoints, health), scaled to the run
    outside = result.seconds - sum(e["seconds"] for e in payload["epochs"])
    payload["projected_fit_s"] = (first + (args.epochs - 1) * payload["epoch_s_median"]
                                  + outside * args.epochs / max(1, result.epochs))
    # on fewer jets than planned (generation cut short), the epochs scaled to the planned training set
    payload["planned_n_train"] = args.planned_jets
    payload["projected_planned_s"] = payload["projected_fit_s"] * max(1.0, args.planned_jets / len(split.train))
    payload["step_kind_after"] = type(trainer.step_fn).__name__
    graph = getattr(trainer.step_fn, "graph", None)
    payload["graph_captured"] = graph is not None
    payload["peak_memory_gb"] = peak_gb(device)
    payload["total_s"] = time.time() - start
    write_json(args.out, payload)
    print(f"jBOT-{args.size}: {result.epochs} of {args.epochs} epochs on {len(split.train):,} jets in "
          f"{result.seconds:.0f} s (projected {payload['projected_fit_s']:.0f} s for {args.epochs}); "
          f"k-NN {payload['knn']} (random init {payload['knn_random_init']})")


def h5_rows(path: Path) -> range:
    import h5py

    from jbot.data.jetnet import PARTICLE_KEY

    with h5py.File(path, "r") as f:
        return range(f[PARTICLE_KEY].shape[0])


# ---------------------------------------------------------------------------------------------------- summary
def cmd_summary(args: argparse.Namespace) -> None:
    """summary.json (every part's status and time, every target's verdict) and the same as text."""
    parts = []
    if args.parts.exists():
        for line in args.parts.read_text().splitlines():
            name, rc, seconds = line.split("\t")
            parts.append({"part": name, "rc": int(rc), "seconds": float(seconds),
                          "status": "ok" if rc == "0" else ("time box" if rc in ("124", "137") else "failed")})

    def load(name: str) -> dict[str, Any]:
        path = args.dir / name
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    matrix, pretrain, ddp = load("matrix.json"), load("pretrain.json"), load("ddp.json")
    verdicts = list(matrix.get("verdicts") or matrix_verdicts({"rows": matrix.get("rows", []),
                                                               "embed": matrix.get("embed", [])}))
    if pretrain:
        whole = (pretrain.get("epochs_done") == pretrain.get("epochs_planned")
                 and (pretrain.get("n_train") or 0) >= (pretrain.get("planned_n_train") or 0))
        seconds = pretrain.get("fit_s") if whole else pretrain.get("projected_planned_s")
        verdicts.append({"what": f"{pretrain.get('epochs_planned')}-epoch jBOT-{pretrain.get('size')} pre-training "
                                 f"on {pretrain.get('planned_n_train')} jets (s)", "target": PRETRAIN_TARGET_S,
                         "measured": seconds,
                         "setting": f"{'measured' if whole else 'projected'}: {pretrain.get('epochs_done')} epochs "
                                    f"run on {pretrain.get('n_train')} jets, k-NN {pretrain.get('knn')} "
                                    f"(random init {pretrain.get('knn_random_init')})",
                         "met": seconds is not None and seconds < PRETRAIN_TARGET_S})
    runs = [r for r in ddp.get("runs", []) if "DDP" in r.get("name", "")]
    tests = pytest_counts(args.dir / "pytest.txt")
    summary = {"device": matrix.get("device") or pretrain.get("device"), "commit": matrix.get("commit") or commit(),
               "parts": parts, "verdicts": verdicts, "pytest": tests,
               "ddp_matches": bool(runs) and all(r.get("matches") for r in runs)}
    write_json(args.dir / "summary.json", summary)
    lines = [f"device: {summary['device']}  commit: {summary['commit']}"]
    lines += [f"part {p['part']:10s} {p['status']:9s} {p['seconds']:6.0f} s" for p in parts]
    for v in verdicts:
        measured = "-" if v["measured"] is None else f"{v['measured']:,.0f}"
        lines.append(f"{'MET ' if v['met'] else 'MISS'} {v['what']}: {measured} (target {v['target']:,}) "
                     f"{v['setting'] or ''}")
    lines.append(f"gpu tests: {tests}; DDP matches one process: {summary['ddp_matches']}")
    print("\n".join(lines))


def pytest_counts(path: Path) -> str:
    try:
        lines = [line for line in path.read_text().splitlines() if " in " in line and ("passed" in line or
                                                                                       "failed" in line or
                                                                                       "skipped" in line)]
    except OSError:
        return "no pytest output"
    return " | ".join(line.strip("= ") for line in lines) or "no summary line"


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
        q = sub.add_parser(name)
        q.set_defaults(fn=fn)
        q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        q.add_argument("--tiny", action="store_true", help="the dry run's tiny models and sizes")
        q.add_argument("--until", type=float, default=0.0, help="Unix time to end by (0: none)")
        q.add_argument("--scratch", default="/tmp/jbot-gpu-scratch", help="checkpoints and other leftovers")
        return q

    add("env", cmd_env).add_argument("--out", type=Path, required=True)
    q = add("generate", cmd_generate)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--jets-per-class", type=int, default=62_000)
    q.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    q.add_argument("--chunk-size", type=int, default=250)
    q.add_argument("--seed", type=int, default=2026)
    q = add("matrix", cmd_matrix)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--profile", type=Path, required=True)
    q.add_argument("--sizes", default="S,B")
    q.add_argument("--batches", default="1024,8192")
    q.add_argument("--precisions", default="bf16,fp32")
    q.add_argument("--modes", default=",".join(MODES))
    q.add_argument("--warmup", type=int, default=5)
    q.add_argument("--rounds", type=int, default=3)
    q.add_argument("--round-s", type=float, default=1.0, help="seconds of steps per timed round")
    q.add_argument("--threads", type=int, default=0)
    q.add_argument("--profile-all", action="store_true", help="profile every compiled row, not only missed targets")
    q.add_argument("--jets", default="none", help="the folder generation writes to (rows say if it was running)")
    q = add("ddp", cmd_ddp)
    q.add_argument("--out", type=Path, required=True)
    q = add("pretrain", cmd_pretrain)
    q.add_argument("--data", type=Path, required=True)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--size", default="B", choices=sorted(SIZES))
    q.add_argument("--epochs", type=int, default=100)
    q.add_argument("--batch", type=int, default=1024, help="the paper's 1024 by default")
    q.add_argument("--planned-jets", type=int, default=304_500, help="the training set the target is for")
    q.add_argument("--set", action="append", default=[], help="more config overrides (section.field=value)")
    q = add("summary", cmd_summary)
    q.add_argument("--dir", type=Path, required=True)
    q.add_argument("--parts", type=Path, required=True)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
