"""The ``jbot`` command line: the options of each command and what it prints. The work is in ``jbot.commands``
(one module per command); this module imports typer and rich, and loads the rest only when a command runs."""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from jbot.commands.inputs import require_data, require_model, resolve
from jbot.commands.sweep_kinds import KINDS as SWEEP_KINDS
from jbot.commands.sweep_kinds import SweepKind
from jbot.config import (
    ConfigError,
    GenerateConfig,
    format_validation_error,
    load_config,
    preset_name,
    to_yaml,
)
from jbot.data.presets import PRESETS
from jbot.errors import JbotError
from jbot.io import scratch_dir
from jbot.model.sizes import size_help
from jbot.paths import resolve_tracking_uri
from jbot.redaction import redact

PRESET_HELP = " | ".join(PRESETS) + " | a preset .yaml file"
CLASSIFY_HELP = " | ".join(n for n, p in PRESETS.items() if p.split == "balanced") + " | a preset .yaml file"


def _plain_types() -> None:
    """Help shows click's plain metavars (TEXT, PATH, INTEGER; nothing for flags), not typer's ``<bool>`` and
    ``<list[str]>``. Left as typer draws it where typer's internals differ."""
    from typer import core

    names = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "list[str]": "TEXT"}
    for cls in (getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)):
        drawn = getattr(cls, "display_type_rich", None)
        if cls is None or drawn is None or getattr(drawn, "jbot_plain", False):
            continue

        def plain(self: Any, ctx: Any, drawn: Any = drawn) -> str | None:
            if self.metavar is not None:
                return str(self.metavar)
            if getattr(self, "is_flag", False):
                return None
            label = str(drawn(self, ctx) or "").strip("<>").removesuffix("...").strip("<>")
            return names.get(label, label.upper()) or None

        plain.jbot_plain = True  # type: ignore[attr-defined]
        cls.display_type_rich = plain


_plain_types()
app = typer.Typer(help="jBOT: self-distilled jet representations, MLflow-native.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
data_app = typer.Typer(help="Jets: generate with Pythia8, fetch JetNet, summarise a folder.", no_args_is_help=True)
register_app = typer.Typer(help="The MLflow Model Registry: register the best run, list versions.",
                            no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(register_app, name="register")
sweep_app = typer.Typer(help="Optuna studies: fine-tuning, anomaly-score settings, pre-training.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")

# long paths and URIs stay on one line (copyable); no markup: paths, names and messages are printed as they are
# (`data[v2]` stays `data[v2]`); the few styled lines pass markup=True with their values escaped
console = Console(soft_wrap=True, markup=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML config: a file, or a shipped one by name (`jbot config list`)",
    show_default="jbot-s")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a field: section.field=value (repeatable); `jbot config show` lists every field",
    show_default="none")]


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show MLflow's and Optuna's own log lines")] = False,
) -> None:
    """jBOT: self-distilled jet representations, MLflow-native."""
    from jbot import signals
    from jbot.logs import configure

    configure(verbose)
    signals.install()  # SIGTERM / SIGUSR1 stop a command as Ctrl-C does (checkpoint, run KILLED, scratch removed)


def say_error(text: str) -> None:
    """One ``error:`` line on stderr: the text escaped (a path like ``data[v2]`` is shown as it is) and redacted."""
    err_console.print("[bold red]error:[/] " + escape(redact(text)), highlight=False, soft_wrap=True, markup=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Errors caused by the user's input end the command with a one-paragraph message, not a traceback; a stop
    signal or Ctrl-C that no command caught ends it with 128 + the signal (``jbot.signals``)."""
    from jbot import signals

    try:
        yield
    except (JbotError, FileNotFoundError) as exc:
        say_error(str(exc))
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt as exc:
        err_console.print(f"{signals.describe(exc)}: files and runs written before are intact", highlight=False)
        raise typer.Exit(code=signals.exit_code(exc)) from None
    except Exception as exc:
        from jbot.io import full_disk_message, is_disk_full
        from jbot.paths import home

        if is_disk_full(exc):
            say_error(full_disk_message(exc, home()))
            raise typer.Exit(code=2) from None
        from jbot.tracking.errors import store_problem

        problem = store_problem(exc)
        if problem is None:
            raise
        say_error(problem)
        raise typer.Exit(code=2) from None


def settings_text(params: dict[str, Any]) -> str:
    """``{"anomaly.knn_k": 58, "finetune.lr": 0.000123456}`` -> ``anomaly.knn_k=58, finetune.lr=0.0001235``."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


def run_ref(run_id: str, uri: str | None) -> str:
    """A run id as printed: with its page's URL when the store is a tracking server (whose UI that is)."""
    if not run_id or not uri or not str(uri).startswith(("http://", "https://")):
        return run_id
    from jbot.tracking.mlflow import connect, run_link, ui_base

    try:
        experiment = connect(str(uri)).get_run(run_id).info.experiment_id
    except Exception:  # the id is still worth printing without its link
        return run_id
    return f"{run_id} ({run_link(ui_base(str(uri)), experiment, run_id)})"


def progress_bar() -> Progress:
    """A bar that disappears when its work ends (or fails): what stays is the command's own lines."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


# ---------------------------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved configuration (YAML + --set overrides; passwords in URIs shown as ***)."""
    from jbot.redaction import public_config

    with user_errors():
        cfg = load_config(config, set_ or [])
    console.print(to_yaml(public_config(cfg)), end="", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------ data


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Output folder for {q,g,w,z,t}.hdf5")],
    jets_per_class: Annotated[int, typer.Option(help="Jets per class")] = 2000,
    background_jets: Annotated[int | None, typer.Option(
        help="Jets for each of q and g when more background is wanted (default: --jets-per-class)")] = None,
    classes: Annotated[str, typer.Option(help="Comma-separated classes among q,g,w,z,t")] = "q,g,w,z,t",
    workers: Annotated[int, typer.Option(help="Parallel Pythia processes")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (output depends on seed and chunk size only)")] = 1,
    chunk_size: Annotated[int, typer.Option(help="Jets per work unit")] = 250,
    particles: Annotated[int, typer.Option(
        help="Constituents kept per jet, the hardest (particle_features (N, P, 4), P = this)")] = 30,
) -> None:
    """Generate jets with Pythia8 + FastJet in the JetNet layout."""
    from jbot.data.generate import generate

    with user_errors():
        try:
            cfg = GenerateConfig(jets_per_class=jets_per_class, background_per_class=background_jets,
                                 workers=workers, seed=seed, chunk_size=chunk_size, n_particles=particles,
                                 classes=tuple(c.strip().lower() for c in classes.split(",") if c.strip()))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, GenerateConfig, "invalid generator options")) from None
        start = time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task("generating jets", total=cfg.total_jets)
            files = generate(cfg, out, on_chunk=lambda c: bar.advance(task, c.n_jets))
        elapsed = time.perf_counter() - start
    console.print(f"wrote {len(files)} files to {out} in {elapsed:.1f} s "
                  f"({cfg.total_jets / elapsed:.0f} jets/s)")


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


@data_app.command("convert")
def data_convert(
    src: Annotated[Path, typer.Option("--from", help="Folder of JetClass ROOT or parquet files "
                                                     "(<channel>_<nnn>.root / .parquet)")],
    out: Annotated[Path, typer.Option(help="Output folder for the HDF5 shards")],
    n_particles: Annotated[int, typer.Option(min=1, help="Particles kept per jet (highest pT first)")] = 30,
    chunk: Annotated[int, typer.Option(min=1, help="Jets read at a time (bounds memory)")] = 100_000,
) -> None:
    """Convert JetClass ROOT or parquet files into HDF5 shards (the paper's features) for streamed pre-training."""
    from jbot.data.convert import convert, root_shards

    with user_errors():
        start = time.perf_counter()
        shards = root_shards(src, n_particles)
        total = sum(s.n for s in shards)
        with progress_bar() as bar:
            task = bar.add_task("converting", total=total)
            done = convert(shards, out, n_particles, chunk, on_rows=lambda n: bar.advance(task, n))
        elapsed = time.perf_counter() - start
    kept = sum(c.skipped for c in done)
    console.print(f"wrote {len(done) - kept} shards ({total} jets in all) to {out} in {elapsed:.1f} s"
                  + (f"; {kept} already converted" if kept else ""))


@data_app.command("info")
def data_info(
    data_dir: Annotated[Path, typer.Argument(help="Folder with {q,g,w,z,t}.hdf5, or JetClass <channel>_<nnn>.root "
                                                  "/ .parquet files")],
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

DataOpt = Annotated[Path | None, typer.Option(help="Data folder", show_default="the config's data.dir")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto | cpu | cuda", show_default="the config's runtime.device")]
TrackingOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI",
    show_default="tracking.uri, else $MLFLOW_TRACKING_URI, else ./mlruns")]
ExperimentOpt = Annotated[str | None, typer.Option("--experiment", help="MLflow experiment",
                                                   show_default="jbot-<command>")]
ModelOpt = Annotated[str, typer.Option("--model", "--checkpoint", "--run-id",
                                       help="Checkpoint path, run id, runs:/ or models:/ URI (alias included)")]


def _overrides(set_: list[str] | None, **fields: object) -> list[str]:
    """``--set`` items plus dedicated options (None = not given)."""
    out = list(set_ or [])
    out += [f"{key}={value}" for key, value in fields.items() if value is not None]
    return out


@app.command("pretrain")
def pretrain_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP, show_default="the config's data.preset")] = None,
    device: DeviceOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output folder",
                                             show_default="the config's pretrain.out_dir")] = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue from this checkpoint (its own config, with --set/--out/--data/--device on top), or `auto`: "
             "from <out>/checkpoint.pt when it exists, else start fresh (one command for a job's first start and "
             "every requeue)")] = None,
    allow_other_data: Annotated[bool, typer.Option(
        "--allow-other-data", help="With --resume: continue on data whose fingerprint differs")] = False,
    tracking_uri: TrackingOpt = None,
    experiment: ExperimentOpt = None,
) -> None:
    """Pre-train a jBOT encoder by self-distillation (views, masking, EMA teacher, DINO + iBOT + KoLeo losses),
    tracked in MLflow. SIGTERM, SIGUSR1 or Ctrl-C stop it at the next step with a checkpoint there (exit code
    143, 138 or 130); `--resume` continues exactly where it stopped."""
    from jbot import signals
    from jbot.launch import world_from_env

    if world_from_env()[0] != 0:  # another rank of a torchrun job: rank 0 prints; errors still show
        console.quiet = True
    with user_errors():
        overrides = _overrides(set_, **{"data.dir": data, "data.preset": preset, "runtime.device": device,
                                        "pretrain.out_dir": out})
        from jbot.commands.resume import prepare, resume_command

        start = prepare(config, overrides, tracking_uri, resume)
        if start.done is not None:
            console.print(start.done)
            return
        cfg = start.cfg
        require_data(cfg)
        jets = "jets streamed" if cfg.data.stream else f"{cfg.data.preset} jets"
        console.print(f"pre-training jBOT (D={cfg.model.d_model}, L={cfg.model.n_layers}, H={cfg.model.n_heads}) "
                      f"on {jets} from {cfg.data.dir} for {cfg.pretrain.epochs} epochs"
                      + (f", continuing from {start.resume.path}" if start.resume else ""))
        from jbot.commands.pretrain import tracked_pretrain

        with progress_bar() as bar:
            epochs = cfg.pretrain.epochs
            task = bar.add_task(f"epoch 1/{epochs}, batches", total=None)

            def on_step(i: int, steps: int) -> None:  # batches of this epoch, with its ETA
                bar.update(task, completed=i + 1, total=steps)

            def on_epoch(report: Any) -> None:
                m = report.metrics
                knn = f", k-NN {m['val/knn_acc']:.3f}" if "val/knn_acc" in m else ""
                bar.console.print(f"epoch {report.epoch}/{report.epochs}: loss {m['train/loss']:.4f}"
                                  f" ({m['system/jets_per_s']:.0f} jets/s{knn})")
                bar.reset(task, description=f"epoch {report.epoch + 1}/{epochs}, batches", total=None)

            try:
                tracked = tracked_pretrain(cfg, resume=start.resume, experiment=experiment,
                                           allow_other_data=allow_other_data, on_step=on_step,
                                           on_epoch=on_epoch,
                                           on_notice=lambda text: bar.console.print(f"note: {text}"),
                                           on_warning=lambda text: err_console.print(f"warning: {text}",
                                                                                     highlight=False))
            except KeyboardInterrupt as exc:
                ckpt = Path(cfg.pretrain.out_dir) / "checkpoint.pt"
                bar.stop()
                if world_from_env()[0] != 0:  # rank 0 says it once for the whole job
                    raise typer.Exit(code=signals.exit_code(exc)) from None
                err_console.print(f"{signals.describe(exc, at=True)}: " + (
                    f"{'its state is' if signals.where(exc) else 'the last completed epoch is'} saved in {ckpt}; "
                    f"the MLflow run is KILLED; continue with `{resume_command(ckpt)}` (or `--resume auto`)"
                    if ckpt.is_file() else "no epoch had completed, nothing was saved"), highlight=False,
                    soft_wrap=True, markup=False)
                raise typer.Exit(code=signals.exit_code(exc)) from None
    result = tracked.payload
    table = Table(title="jBOT pre-training")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("train/loss", "train/loss_part", "train/loss_cls", "train/loss_koleo", "diag/teacher_entropy",
                "system/jets_per_s"):
        table.add_row(key, f"{result.history[key][-1]:.4g}")
    table.add_row("val/knn_acc", f"{result.knn_acc:.4f}" if result.knn_acc is not None else "-")
    table.add_row("wall time (s)", f"{result.seconds:.1f}")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("MLflow run", run_ref(tracked.run_id, cfg.tracking.uri))
    table.add_row("model URI", str(tracked.model_uri))
    console.print(table)


# ---------------------------------------------------------------------------------- probe / finetune


@app.command("probe")
def probe_cmd(
    model: ModelOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    preset: Annotated[str, typer.Option(help=CLASSIFY_HELP)] = "5class",
    out: Annotated[Path | None, typer.Option(help="Folder for probe.json and plots")] = None,
    device: DeviceOpt = None,
    tracking_uri: TrackingOpt = None,
    experiment: ExperimentOpt = None,
) -> None:
    """k-NN and linear probes and clustering metrics of a frozen encoder."""
    with user_errors():
        try:
            preset_name(preset, classify=True)
        except ValueError as exc:
            raise ConfigError(f"--preset: {exc}") from None
        cfg = resolve(config, _overrides(set_, **{"data.dir": data, "runtime.device": device}), tracking_uri)
        require_model(model)
        require_data(cfg, preset)
        from jbot.commands.probe import tracked_probe

        with console.status("loading the encoder and the jets") as status:
            tracked = tracked_probe(cfg, model, preset, out_dir=out, experiment=experiment,
                                    on_phase=lambda text: status.update(f"{text} ..."))
    from jbot.evaluate.table import results_table

    result = tracked.payload
    m = result.metrics
    console.print(results_table(f"frozen-encoder probes ({preset})", result.rows(), result.class_names))
    console.print(f"clustering (k-means, {len(result.class_names)} clusters): purity {m['test/purity']:.4f}, "
                  f"ARI {m['test/ari']:.4f}, NMI {m['test/nmi']:.4f}, silhouette {m['test/silhouette']:.4f}")
    console.print(f"MLflow run {run_ref(tracked.run_id, cfg.tracking.uri)}"
                  + (f"; metrics in {out / 'probe.json'}" if out else ""))


@app.command("finetune")
def finetune_cmd(
    model: Annotated[str | None, typer.Option("--model", "--checkpoint", "--run-id",
                                              help="Pre-trained encoder: path, run id, runs:/ or models:/ URI")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    task: Annotated[str | None, typer.Option(help=CLASSIFY_HELP, show_default="the config's finetune.task")] = None,
    fraction: Annotated[float | None, typer.Option(help="Class-balanced share of the training split",
                                                   show_default="the config's finetune.fraction")] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Supervised baseline: random init")] = False,
    out: Annotated[Path, typer.Option(help="Folder for the classifier checkpoint and metrics")] = Path("runs/finetune"),
    device: DeviceOpt = None,
    tracking_uri: TrackingOpt = None,
    experiment: ExperimentOpt = None,
) -> None:
    """Fine-tune a pre-trained encoder with layer-wise LR decay, or train the supervised baseline."""
    with user_errors():
        cfg = resolve(config, _overrides(set_, **{"data.dir": data, "finetune.task": task,
                                                  "finetune.fraction": fraction, "runtime.device": device}),
                      tracking_uri)
        if model is None and not from_scratch:
            raise ConfigError("pass --model (a pre-trained encoder) or --from-scratch")
        if not from_scratch and model is not None:
            require_model(model)
        require_data(cfg, cfg.finetune.task)
        from jbot.commands.finetune import tracked_finetune
        from jbot.evaluate.table import results_table

        label = "from scratch" if from_scratch else "fine-tuned"
        with progress_bar() as bar:
            task_id = bar.add_task(f"{label} ({cfg.finetune.fraction:.0%} labels)", total=cfg.finetune.epochs)
            tracked = tracked_finetune(cfg, None if from_scratch else model, out_dir=out, experiment=experiment,
                                       on_epoch=lambda e, m: bar.advance(task_id))
    outcome = tracked.payload
    result = outcome.result
    console.print(results_table(f"{label}, {result.n_train:,} training jets, best epoch {result.best_epoch}",
                                {label: outcome.metrics}, outcome.class_names))
    console.print(f"classifier: {out / 'classifier.pt'}; MLflow run {run_ref(tracked.run_id, cfg.tracking.uri)}; "
                  f"model {tracked.model_uri}")


# ------------------------------------------------------------------------------ import-keras / embed


@app.command("import-keras")
def import_keras_cmd(
    backbone: Annotated[Path, typer.Argument(help="Published backbone .weights.h5")],
    out: Annotated[Path, typer.Option(help="Where to write the jbot checkpoint")],
    classifier: Annotated[Path | None, typer.Option(help="Published classifier (mlp) .weights.h5")] = None,
    register: Annotated[str | None, typer.Option(help="Also register the model under this name")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Import the authors' Keras 3 weights (no TensorFlow needed) as a jbot checkpoint, logged to MLflow."""
    with user_errors():
        uri = resolve(config, set_, tracking_uri).tracking.uri
        for path in (backbone, classifier):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path}: Keras weights file not found")
        from jbot.commands.import_keras import tracked_import

        state, tracked = tracked_import(backbone, classifier, out, str(uri), register)
    m = state["config"]["model"]
    extra = f" + classifier ({len(state['class_names'])} classes)" if classifier else ""
    console.print(f"imported D={m['d_model']}, H={m['n_heads']}, L={m['n_layers']}{extra} -> {out}")
    console.print(f"MLflow run {run_ref(tracked.run_id, str(uri))}, model {tracked.model_uri}"
                  + (f", registered as {register} version {tracked.payload}" if register else ""), soft_wrap=True)


@app.command("embed")
def embed_cmd(
    model: ModelOpt,
    input_: Annotated[Path, typer.Option("--input", help=(
        "Jets file: JetNet-layout HDF5, JetClass ROOT or parquet (any particle count: the hardest P kept, or "
        "zero-padded), or .npz holding x (N, P, F); P and F = the model's model.n_particles and model.features"))],
    out: Annotated[Path, typer.Option(help="Output .npz: cls, particles and (classifiers) probs")],
    batch_size: Annotated[int, typer.Option(help="Jets per batch", min=1)] = 4096,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Embeddings of jets: [CLS] (N, D), particle tokens (N, P, D), class probabilities for classifiers."""
    with user_errors():
        cfg = resolve(config, _overrides(set_, **{"runtime.device": device}), tracking_uri)
        require_model(model)
        if not input_.is_file():
            raise ConfigError(f"--input {input_}: file not found")
        from jbot.commands.embed import embed_file

        with progress_bar() as bar:
            task = bar.add_task("embedding", total=None)
            shapes = embed_file(cfg, model, input_, out, batch_size, on_batch=lambda n: bar.advance(task, n))
    console.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


@app.command("export")
def export_cmd(
    model: ModelOpt,
    out: Annotated[Path, typer.Option(help="Output file (.onnx)")],
    format_: Annotated[str, typer.Option("--format", help="onnx (the one format so far)")] = "onnx",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Export an encoder or classifier for ONNX Runtime: inputs jets (batch, P, F), P and F = the model's
    model.n_particles and the columns of model.features (in the file's metadata, jbot.features); outputs cls,
    particles and, for classifiers, probs, as `jbot embed` writes them (dynamic batch axis)."""
    with user_errors():
        if format_ != "onnx":
            raise ConfigError(f"--format {format_!r}: only onnx is supported")
        cfg = resolve(config, set_, tracking_uri)
        require_model(model)
        from jbot.commands.export import export_model

        with console.status("exporting to ONNX"):
            names = export_model(cfg, model, out)
    console.print(f"wrote {out}: inputs {', '.join(names['inputs'])} -> outputs {', '.join(names['outputs'])}")


# -------------------------------------------------------------------------------------------- anomaly


@app.command("anomaly")
def anomaly_cmd(
    model: ModelOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for the report, metrics JSON and table")] = Path("runs/anomaly"),
    preset: Annotated[str, typer.Option(
        help=f"{PRESET_HELP}: its background classes against the others (qg: q, g against W, Z, t)")] = "qg",
    device: DeviceOpt = None,
    tracking_uri: TrackingOpt = None,
    experiment: ExperimentOpt = None,
) -> None:
    """Anomaly-detection report of a frozen encoder pre-trained on background jets, from a run or the registry."""
    with user_errors():
        cfg = resolve(config, _overrides(set_, **{"data.dir": data, "runtime.device": device}), tracking_uri)
        require_model(model)
        require_data(cfg, preset, anomaly=True)
        from jbot.commands.anomaly import tracked_anomaly

        tracked = tracked_anomaly(cfg, model, out_dir=out, experiment=experiment, preset=preset,
                                  on_note=lambda text: console.print(f"note: {text}", highlight=False))
    console.print(tracked.payload.table, highlight=False)
    console.print(f"report: {tracked.payload.paths['report']}; MLflow run {run_ref(tracked.run_id, cfg.tracking.uri)}")


# ------------------------------------------------------------------------------------ registry / ui


@register_app.command("best")
def register_best_cmd(
    experiment: Annotated[str, typer.Option(help="Experiment to search")] = "jbot-finetune",
    metric: Annotated[str, typer.Option(help="Metric to rank runs by")] = "test/acc",
    mode: Annotated[str, typer.Option(help="max | min")] = "max",
    filter_: Annotated[str | None, typer.Option(
        "--filter", help="MLflow run filter, e.g. \"params.`model.d_model` = '64'\"")] = None,
    parent: Annotated[str | None, typer.Option(help="Only children of this (sweep) run")] = None,
    name: Annotated[str, typer.Option(help="Registered model name")] = "jbot-encoder",
    alias: Annotated[str | None, typer.Option(help="Alias to point at the version")] = "champion",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Register the best finished run's model, tag the version, set the alias (idempotent per run)."""
    with user_errors():
        uri = resolve(config, set_, tracking_uri).tracking.uri
        from jbot.tracking.mlflow import connect
        from jbot.tracking.registry import register_best

        client = connect(str(uri))
        reg = register_best(client, experiment, metric, name, mode, alias, filter_, parent)
    verb = "registered" if reg.created else "already registered"
    console.print(f"{verb}: {reg.name} version {reg.version} from run {reg.run_id} ({reg.metric} = {reg.value:.4f})"
                  + (f"; alias @{reg.alias} -> version {reg.version} (models:/{reg.name}@{reg.alias})"
                     if reg.alias else ""))


@register_app.command("list")
def register_list_cmd(
    name: Annotated[str, typer.Option(help="Registered model name")] = "jbot-encoder",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Versions of a registered model with their aliases, runs and metrics."""
    with user_errors():
        uri = resolve(config, set_, tracking_uri).tracking.uri
        from jbot.tracking.mlflow import connect
        from jbot.tracking.registry import list_versions

        rows = list_versions(connect(str(uri)), name)
    table = Table(title=f"registered model {name}")
    for col in ("version", "aliases", "run_id", "metric", "value"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(row[c] for c in ("version", "aliases", "run_id", "metric", "value")))
    console.print(table)


@app.command("ui")
def ui_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 5000,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Start the MLflow UI on the configured store and print its URL (Ctrl-C or SIGTERM stops it and its workers)."""
    from jbot.logs import verbose

    with user_errors():
        uri = str(resolve(config, set_, tracking_uri).tracking.uri)
    if uri.startswith(("http://", "https://")):
        console.print(f"the tracking store is a server: open {redact(uri)}")
        return
    with user_errors():
        from jbot.tracking.ui import experiment_links, serve_ui

        def ready(base: str) -> None:
            links = experiment_links(uri, base)
            console.print(f"MLflow UI for {redact(uri)} at {base} (Ctrl-C to stop)")
            for name, link in links:
                console.print(f"  {name:<28} {link}")
            if not links:
                console.print("  no jbot runs in this store yet")

        serve_ui(uri, host, port, quiet=not verbose(), on_ready=ready)


@app.command("reproduce")
def reproduce_cmd(
    scale: Annotated[str, typer.Option(help="demo (about 12 min on 2 cores) | cpu (about an hour) | paper (GPU)")]
    = "demo",
    size: Annotated[str, typer.Option(help=size_help())] = "S",
    data: Annotated[Path, typer.Option(help="Jets; generated here (demo, cpu) when the folder has none")]
    = Path("data/jets"),
    out: Annotated[Path | None, typer.Option(help="Folder for checkpoints and the report "
                                                  "(default runs/reproduce-<scale>-<size>, for a study "
                                                  "runs/<study>-<scale>-<size>)")] = None,
    set_: SetOpt = None,
    workers: Annotated[int, typer.Option(help="Generation processes", min=1)] = 2,
    seed: Annotated[int, typer.Option(help="Generation seed (when jets are generated)", min=0)] = 2026,
    study: Annotated[str, typer.Option(help="paper (the paper's claims) | ablation (each piece of the method "
                                            "removed in turn) | label-fraction (fine-tuning gain against the "
                                            "labelled fraction, evaluate.label_fractions)")] = "paper",
    tracking_uri: TrackingOpt = None,
) -> None:
    """The paper's protocol end to end at a scale your machine allows: probes, fine-tuning vs scratch, top
    tagging, anomaly detection; one MLflow parent run, resumable (finished steps are skipped on re-run).
    `--study ablation`: the full method against each variant (particle loss only, [CLS] loss only, no KoLeo, no
    masking) on the same jets; `--study label-fraction`: pre-trained against from-scratch fine-tuning at each
    labelled fraction."""
    with user_errors():
        from jbot.commands.reproduce import ensure_data, plan_for, run_reproduction, verdict
        from jbot.commands.studies import study as find_study

        folder = out or Path(f"runs/{find_study(study).folder}-{scale}-{size}")
        plan = plan_for(scale, size, data, folder, list(set_ or []), resolve_tracking_uri(tracking_uri), study)
        ensure_data(plan, workers, seed, console.print)
        try:
            summary = run_reproduction(plan, lambda text: console.print(f"[bold]{escape(text)}[/]", markup=True))
        except KeyboardInterrupt as exc:
            from jbot import signals

            err_console.print(f"{signals.describe(exc)}: the parent run and the running step are KILLED; finished "
                              "steps are kept; run the same command again to go on", highlight=False)
            raise typer.Exit(code=signals.exit_code(exc)) from None
    for claim in summary["claims"]:
        console.print(f"{verdict(claim)}: {claim['text']}")
    console.print(f"report: {summary['report']}; MLflow parent run {run_ref(summary['parent'], plan.cfg.tracking.uri)} "
                  f"({summary['seconds']:.0f} s in this run)")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Folder for jets, checkpoints and the reports")] = Path("data/demo"),
    jets_per_class: Annotated[int, typer.Option(help="Generated jets per class")] = 2000,
    workers: Annotated[int, typer.Option(help="Pythia processes")] = 2,
    epochs: Annotated[int | None, typer.Option(help="Pre-training epochs (default: the demo scale's)")] = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """The whole story on the embedded MLflow store: generate jets, the paper's claims at the demo scale with a
    verdict each (`jbot reproduce --scale demo`), register the background encoder, tune the anomaly score and
    write its report from the registry alias."""
    from jbot.commands.demo import DemoSettings, run_demo
    from jbot.commands.reproduce import verdict

    with user_errors():
        res = run_demo(DemoSettings(out=out, jets_per_class=jets_per_class, workers=workers, epochs=epochs,
                                    tracking_uri=tracking_uri, overrides=tuple(set_ or [])),
                       lambda text: console.print(f"[bold]{escape(text)}[/]", markup=True))
    science = res["science"]
    console.print(f"[bold]The paper's claims at the demo scale[/] (jBOT-S, config {escape(science['config'])}; "
                  "numbers beside the paper's in the report):", markup=True)
    for claim in science["claims"]:
        said = verdict(claim)
        shown = f"[green]{said}[/]" if said == "holds" else f"[yellow]{said}[/]"
        console.print(f"  {shown}: {escape(claim['text'])}", markup=True)
    console.print(f"reproduction report: {science['report']} (MLflow parent run {science['parent']})")
    reg = res["registered"]
    console.print(f"registered jbot-encoder version {reg.version} (@champion) from run {reg.run_id}")
    sweep = res["sweep"]
    console.print(f"anomaly sweep: {sweep.get('n_complete')} trials, best validation combined AUC "
                  f"{sweep.get('best_value', float('nan')):.4f} with {settings_text(sweep.get('best_params', {}))}")
    console.print(res["anomaly"].payload.table, highlight=False)
    console.print(f"anomaly report: {res['anomaly'].payload.paths['report']}")
    console.print(f"done in {res['seconds']:.0f} s. Everything is in the MLflow store {res['uri']}: "
                  "open it with `.venv/bin/jbot ui` (http://127.0.0.1:5000)")


# --------------------------------------------------------------------------------------------- sweeps

TrialsOpt = Annotated[int, typer.Option("--trials", help="Total COMPLETE trials across all workers (at least 1)")]
StorageOpt = Annotated[str | None, typer.Option(help="Optuna storage: postgresql://..., sqlite:///..., or a .log file")]
StudyOpt = Annotated[str | None, typer.Option("--study-name", help="Study name (default: derived from the inputs)")]
SpaceOpt = Annotated[Path | None, typer.Option("--space", help="Search space YAML (default: the shipped <kind>.yaml)")]


def _print_sweep(outcome: Any, summary: dict[str, Any]) -> None:
    console.print(f"study {outcome.study.study_name}: {outcome.n_complete} complete, {outcome.n_pruned} pruned, "
                  f"{outcome.n_failed} failed trials ({outcome.seconds:.0f} s in this worker); "
                  f"MLflow parent run {outcome.parent_run_id}")
    failed = [t for t in outcome.study.get_trials(deepcopy=False) if t.state.name == "FAIL" and "error" in t.user_attrs]
    if failed:  # Optuna's own lines only show with --verbose: the reason, once
        console.print(f"trial {failed[-1].number} failed: {failed[-1].user_attrs['error']}"
                      + (f" (and {len(failed) - 1} more: see their MLflow runs)" if len(failed) > 1 else ""))
    if "best_value" in summary:
        console.print(f"best trial {summary['best_trial']}: {summary['best_value']:.4f} with "
                      f"{settings_text(summary['best_params'])}"
                      f" (run {summary.get('best_run_id')})")
    for key, value in summary.get("test", {}).items():
        if not key.endswith("_std"):
            console.print(f"  {key} = {value:.4f} ± {summary['test'].get(key + '_std', float('nan')):.4f}")
    if "registered" in summary:
        console.print(f"registered {summary['registered']} (@champion)")
    if summary.get("finalized_by_another_worker"):
        console.print("the best trial's test metrics and registration were done by another worker")


def _interrupted(kind: str, exc: KeyboardInterrupt) -> None:
    from jbot import signals

    err_console.print(f"{signals.describe(exc)}: completed trials are kept in the study and the running one is "
                      f"queued again; re-run the same `jbot sweep {kind}` command to resume", highlight=False)
    raise typer.Exit(code=signals.exit_code(exc))


def _sweep_command(kind: SweepKind) -> Callable[..., None]:
    """``jbot sweep <kind>``: [--model], --trials, the kind's own options, then the options every sweep takes."""

    def command(**given: Any) -> None:
        extras = {o.name: given[o.name] for o in kind.options}
        fields = {o.field: extras[o.name] for o in kind.options if o.field}
        identity = {**({"model": given["model"]} if kind.uses_model else {}),
                    **{o.name: extras[o.name] for o in kind.options if o.field}}
        with user_errors():
            if given["trials"] < 1:
                raise ConfigError(f"--trials {given['trials']}: a sweep needs at least 1 trial")
            cfg = resolve(given["config"], _overrides(given["set_"], **{"data.dir": given["data"], **fields}),
                          given["tracking_uri"])
            if "model" in identity:
                require_model(identity["model"])
            require_data(cfg, kind.preset(cfg))
            from jbot.commands.sweep import make_sweep, run_sweep

            sweep = make_sweep(kind, cfg, given["trials"], given["space"], given["storage"], given["study_name"],
                               given["experiment"], identity)

            objective, finish = kind.start(sweep, given.get("model"), extras, scratch_dir(f"sweep-{kind.name}-"))
            try:
                outcome, summary = run_sweep(sweep, objective, finish)
            except KeyboardInterrupt as exc:
                _interrupted(kind.name, exc)
        _print_sweep(outcome, summary)
        if kind.note:
            console.print(kind.note)

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("model", keyword, annotation=ModelOpt)] if kind.uses_model else []
    params.append(inspect.Parameter("trials", keyword, annotation=TrialsOpt, default=kind.trials))
    params += [inspect.Parameter(o.name, keyword, default=None,
                                 annotation=Annotated[o.type, typer.Option(f"--{o.name}", help=o.help)])
               for o in kind.options]
    params += [inspect.Parameter(name, keyword, annotation=annotation, default=None) for name, annotation in (
        ("config", ConfigOpt), ("set_", SetOpt), ("data", DataOpt), ("space", SpaceOpt), ("storage", StorageOpt),
        ("study_name", StudyOpt), ("tracking_uri", TrackingOpt), ("experiment", ExperimentOpt))]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    command.__doc__ = kind.help
    command.__name__ = f"sweep_{kind.name}_cmd"
    return command


for _kind in SWEEP_KINDS.values():
    sweep_app.command(_kind.name)(_sweep_command(_kind))


@app.command("dashboard")
def dashboard_cmd(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port)")] = 8080,
) -> None:
    """Open optuna-dashboard on the sweeps' study storage (default: sweeps/optuna.db here); Ctrl-C stops it."""
    from jbot.logs import verbose

    with user_errors():
        from jbot.sweeps.dashboard import open_storage, serve, study_links

        url, opened = open_storage(storage)

        def ready(base: str) -> None:
            console.print(f"optuna-dashboard for {redact(url)} at {base} (Ctrl-C to stop)")
            links = study_links(opened, base)
            for name, link in links:
                console.print(f"  {name:<28} {link}")
            if not links:
                console.print("  no studies in this storage yet")

        serve(opened, host, port, quiet=not verbose(), on_ready=ready)


def main() -> None:  # pragma: no cover
    app()
