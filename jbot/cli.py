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

    from jbot.train.checkpoint import CheckpointError
    from jbot.train.pretrain import TrainingDiverged

    return (ConfigError, DataError, GeneratorUnavailable, FileNotFoundError, CheckpointError, TrainingDiverged)


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


def main() -> None:  # pragma: no cover
    app()
