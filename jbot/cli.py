"""The ``jbot`` command line: each command loads its config, calls one library function, prints a summary."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from jbot.config import ConfigError, GenerateConfig, JbotConfig, load_config, to_yaml

app = typer.Typer(help="jBOT: self-distilled jet representations, MLflow-native.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
data_app = typer.Typer(help="Jets: generate with Pythia8, fetch JetNet, summarise a folder.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default configs/jbot-s.yaml)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: section.field=value (repeatable)")]


def user_error_types() -> tuple[type[BaseException], ...]:
    from jbot.data.generate import GeneratorUnavailable
    from jbot.data.jetnet import DataError
    from jbot.model.keras_import import KerasImportError
    from jbot.train.checkpoint import CheckpointError
    from jbot.train.pretrain import TrainingDiverged

    return (ConfigError, DataError, GeneratorUnavailable, FileNotFoundError, CheckpointError, TrainingDiverged,
            KerasImportError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Errors caused by the user's input end the command with a one-paragraph message, not a traceback."""
    try:
        yield
    except user_error_types() as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def resolve(config: Path | None, overrides: list[str] | None) -> JbotConfig:
    return load_config(config, overrides or [])


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


# ---------------------------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved configuration (YAML + --set overrides)."""
    with user_errors():
        cfg = resolve(config, set_)
    console.print(to_yaml(cfg), end="", highlight=False)


# ------------------------------------------------------------------------------------------------ data


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Output folder for {q,g,w,z,t}.hdf5")],
    jets_per_class: Annotated[int, typer.Option(help="Jets per class")] = 2000,
    classes: Annotated[str, typer.Option(help="Comma-separated classes among q,g,w,z,t")] = "q,g,w,z,t",
    workers: Annotated[int, typer.Option(help="Parallel Pythia processes")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (output depends on seed and chunk size only)")] = 1,
    chunk_size: Annotated[int, typer.Option(help="Jets per work unit")] = 250,
) -> None:
    """Generate jets with Pythia8 + FastJet in the JetNet layout."""
    from jbot.data.generate import generate

    with user_errors():
        try:
            cfg = GenerateConfig(jets_per_class=jets_per_class, workers=workers, seed=seed, chunk_size=chunk_size,
                                 classes=tuple(c.strip().lower() for c in classes.split(",") if c.strip()))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        start = time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task("generating jets", total=jets_per_class * len(cfg.classes))
            files = generate(cfg, out, on_chunk=lambda c: bar.advance(task, c.n_jets))
        elapsed = time.perf_counter() - start
    console.print(f"wrote {len(files)} files to {out} in {elapsed:.1f} s "
                  f"({jets_per_class * len(files) / elapsed:.0f} jets/s)")


@data_app.command("fetch")
def data_fetch(
    out: Annotated[Path, typer.Option(help="Output folder")],
    classes: Annotated[str, typer.Option(help="Comma-separated classes")] = "q,g,w,z,t",
    timeout: Annotated[float, typer.Option(help="Network timeout in seconds")] = 10.0,
) -> None:
    """Download the real JetNet (30 particles) from Zenodo, md5-checked."""
    from jbot.data.fetch import fetch_jetnet

    with user_errors():
        files = fetch_jetnet(out, tuple(c.strip() for c in classes.split(",")), timeout=timeout)
    console.print(f"JetNet files in {out}: {', '.join(p.name for p in files.values())}")


@data_app.command("info")
def data_info(
    data_dir: Annotated[Path, typer.Argument(help="Folder with {q,g,w,z,t}.hdf5")],
    html: Annotated[Path | None, typer.Option(help="Where to write the distributions (HTML)")] = None,
) -> None:
    """Per-class counts, multiplicity and jet-mass summaries; plotly HTML of the distributions."""
    from jbot.data.info import summarize, write_report

    with user_errors():
        summary = summarize(data_dir)
        report = write_report(summary, html or data_dir / "info.html", f"jets in {data_dir}")
    table = Table(title=f"{data_dir}")
    for col in ("class", "jets", "multiplicity (median)", "mass median [GeV]", "mass 16-84 % [GeV]", "pT median [GeV]"):
        table.add_column(col, justify="right")
    for name, s in summary.items():
        table.add_row(name, f"{s['n_jets']:,}", f"{s['multiplicity']['median']:.0f}", f"{s['mass']['median']:.1f}",
                      f"{s['mass']['q16']:.0f}-{s['mass']['q84']:.0f}", f"{s['pt']['median']:.0f}")
    console.print(table)
    console.print(f"distributions: {report}")


# -------------------------------------------------------------------------------------------- pretrain


@app.command("pretrain")
def pretrain_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: Annotated[Path | None, typer.Option(help="Data folder (overrides data.dir)")] = None,
    preset: Annotated[str | None, typer.Option(help="5class | tqg | qg (overrides data.preset)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (overrides pretrain.device)")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (overrides pretrain.out_dir)")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue from this checkpoint (its own config is used)")] = None,
) -> None:
    """Pre-train a jBOT encoder by self-distillation (SPEC §2-6)."""
    from jbot.config import build_config
    from jbot.data.splits import make_split
    from jbot.train.checkpoint import load_checkpoint
    from jbot.train.pretrain import pretrain

    with user_errors():
        overrides = list(set_ or [])
        overrides += [f"data.dir={data}"] if data else []
        overrides += [f"data.preset={preset}"] if preset else []
        overrides += [f"pretrain.device={device}"] if device else []
        overrides += [f"pretrain.out_dir={out}"] if out else []
        cfg = resolve(config, overrides)
        if resume is not None:
            cfg = build_config(load_checkpoint(resume)["config"])
        split = make_split(cfg.data.dir, cfg.data.preset, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test,
                           cfg.data.seed)
        console.print(f"pre-training jBOT (D={cfg.model.d_model}, L={cfg.model.n_layers}, H={cfg.model.n_heads}) "
                      f"on {len(split.train):,} {cfg.data.preset} jets for {cfg.pretrain.epochs} epochs")
        with progress_bar() as bar:
            task = bar.add_task("epoch 1", total=None)

            def on_step(i: int) -> None:
                bar.advance(task)

            def on_epoch(report: Any) -> None:
                m = report.metrics
                knn = f", k-NN {m['val/knn_acc']:.3f}" if "val/knn_acc" in m else ""
                bar.console.print(f"epoch {report.epoch}/{report.epochs}: loss {m['train/loss']:.4f}"
                                  f" ({m['train/jets_per_s']:.0f} jets/s{knn})")
                bar.update(task, description=f"epoch {report.epoch + 1}", completed=0)

            result = pretrain(cfg, split, cfg.pretrain.out_dir, resume=resume, on_step=on_step, on_epoch=on_epoch)
    table = Table(title="jBOT pre-training")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("train/loss", "train/loss_part", "train/loss_cls", "train/loss_koleo", "train/teacher_entropy",
                "train/jets_per_s"):
        table.add_row(key, f"{result.history[key][-1]:.4g}")
    table.add_row("val/knn_acc", f"{result.knn_acc:.4f}" if result.knn_acc is not None else "-")
    table.add_row("wall time [s]", f"{result.seconds:.1f}")
    table.add_row("checkpoint", str(result.checkpoint))
    console.print(table)


# ---------------------------------------------------------------------------------- probe / finetune


CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="A jbot checkpoint (pre-trained or fine-tuned)")]


def _split_for(cfg: JbotConfig, preset: str) -> Any:
    from jbot.data.splits import make_split

    return make_split(cfg.data.dir, preset, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test, cfg.data.seed)


def _overrides(set_: list[str] | None, **fields: object) -> list[str]:
    """``--set`` items plus dedicated options (``data_dir="data.dir"`` style, None = not given)."""
    out = list(set_ or [])
    out += [f"{key}={value}" for key, value in fields.items() if value is not None]
    return out


@app.command("probe")
def probe_cmd(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: Annotated[Path | None, typer.Option(help="Data folder (overrides data.dir)")] = None,
    preset: Annotated[str, typer.Option(help="5class | tqg")] = "5class",
    out: Annotated[Path | None, typer.Option(help="Folder for probe.json and plots")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """k-NN and linear probes and clustering metrics of a frozen encoder (SPEC §7)."""
    from jbot.evaluate.probe import run_probe
    from jbot.evaluate.table import results_table, write_json
    from jbot.train.checkpoint import load_encoder
    from jbot.train.device import pick_device

    with user_errors():
        if preset not in ("5class", "tqg"):
            raise ConfigError(f"probe presets are 5class and tqg, not {preset!r}")
        cfg = resolve(config, _overrides(set_, **{"data.dir": data}))
        encoder = load_encoder(checkpoint)
        split = _split_for(cfg, preset)
        result = run_probe(encoder, split, cfg.probe, pick_device(device))
    m = result.metrics
    rows = {"k-NN": {k.replace("test/knn_", "test/"): v for k, v in m.items() if k.startswith("test/knn_")},
            "linear": {k.replace("test/linear_", "test/"): v for k, v in m.items() if k.startswith("test/linear_")}}
    console.print(results_table(f"frozen-encoder probes ({preset}, {len(split.test):,} test jets)", rows,
                                split.class_names))
    console.print(f"clustering (k-means, {split.n_classes} clusters): purity {m['test/purity']:.4f}, "
                  f"ARI {m['test/ari']:.4f}, silhouette {m['test/silhouette']:.4f}")
    if out is not None:
        console.print(f"metrics: {write_json(out / 'probe.json', m)}")


@app.command("finetune")
def finetune_cmd(
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Pre-trained jbot checkpoint")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: Annotated[Path | None, typer.Option(help="Data folder (overrides data.dir)")] = None,
    task: Annotated[str | None, typer.Option(help="5class | tqg (overrides finetune.task)")] = None,
    fraction: Annotated[float | None, typer.Option(help="Class-balanced share of the training split")] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Supervised baseline: random init")] = False,
    out: Annotated[Path, typer.Option(help="Folder for the classifier checkpoint and metrics")] = Path("runs/finetune"),
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
) -> None:
    """Fine-tune a pre-trained encoder with layer-wise LR decay, or train the supervised baseline."""
    from jbot.evaluate.metrics import classification_metrics
    from jbot.evaluate.table import results_table, write_json
    from jbot.train.checkpoint import load_encoder, save_checkpoint
    from jbot.train.device import pick_device
    from jbot.train.finetune import classifier_state, finetune, predict_proba

    with user_errors():
        cfg = resolve(config, _overrides(set_, **{"data.dir": data, "finetune.task": task,
                                                  "finetune.fraction": fraction, "pretrain.device": device}))
        if checkpoint is None and not from_scratch:
            raise ConfigError("pass --checkpoint (a pre-trained encoder) or --from-scratch")
        encoder = None if from_scratch else load_encoder(checkpoint)  # type: ignore[arg-type]
        if encoder is not None:
            cfg = cfg.model_copy(update={"model": encoder.cfg})
        split = _split_for(cfg, cfg.finetune.task)
        label = "from scratch" if from_scratch else "fine-tuned"
        with progress_bar() as bar:
            task_id = bar.add_task(f"{label} ({cfg.finetune.fraction:.0%} labels)", total=cfg.finetune.epochs)
            result = finetune(cfg, split, encoder, on_epoch=lambda e, m: bar.advance(task_id))
        probs = predict_proba(result.model, split.test.x, pick_device(cfg.pretrain.device))
        metrics = {f"test/{k}": v for k, v in classification_metrics(
            split.test.y, probs, split.class_names, cfg.probe.n_folds).items()}
        metrics["val/best_acc"] = result.best_val_acc
        save_checkpoint(out / "classifier.pt", classifier_state(result, cfg, split.class_names, metrics))
        write_json(out / "metrics.json", metrics)
    console.print(results_table(f"{label}, {result.n_train:,} training jets, best epoch {result.best_epoch}",
                                {label: metrics}, split.class_names))
    console.print(f"classifier: {out / 'classifier.pt'}")


# ------------------------------------------------------------------------------ import-keras / embed


@app.command("import-keras")
def import_keras_cmd(
    backbone: Annotated[Path, typer.Argument(help="Published backbone .weights.h5")],
    out: Annotated[Path, typer.Option(help="Where to write the jbot checkpoint")],
    classifier: Annotated[Path | None, typer.Option(help="Published classifier (mlp) .weights.h5")] = None,
) -> None:
    """Import the authors' Keras 3 weights (no TensorFlow needed) as a jbot checkpoint."""
    from jbot.model.keras_import import import_keras
    from jbot.train.checkpoint import save_checkpoint

    with user_errors():
        state = import_keras(backbone, classifier)
        save_checkpoint(out, state)
    m = state["config"]["model"]
    extra = f" + classifier ({len(state['class_names'])} classes)" if classifier else ""
    console.print(f"imported D={m['d_model']}, H={m['n_heads']}, L={m['n_layers']}{extra} -> {out}")


@app.command("embed")
def embed_cmd(
    model: Annotated[str, typer.Option("--model", help="A jbot checkpoint path")],
    input_: Annotated[Path, typer.Option("--input", help="JetNet-layout HDF5 file or .npz holding x (N, 30, 4)")],
    out: Annotated[Path, typer.Option(help="Output .npz: cls, particles and (classifiers) probs")],
    batch_size: Annotated[int, typer.Option(help="Jets per batch")] = 4096,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Embeddings of jets: [CLS] (N, D), particle tokens (N, P, D), class probabilities for classifiers."""
    from jbot.evaluate.embed import embed_to_file
    from jbot.train.checkpoint import load_model
    from jbot.train.device import pick_device

    with user_errors():
        loaded = load_model(model)
        with progress_bar() as bar:
            task = bar.add_task("embedding", total=None)
            shapes = embed_to_file(loaded, input_, out, batch_size, pick_device(device),
                                   on_batch=lambda n: bar.advance(task, n))
    console.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def main() -> None:  # pragma: no cover
    app()
