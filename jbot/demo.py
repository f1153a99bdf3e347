"""The end-to-end demo behind ``make demo`` / ``jbot demo``, on the embedded MLflow store.

Generate jets with Pythia8; pre-train a small jBOT-S on 5 classes, probe it, fine-tune it with 10 % of the labels
against the from-scratch baseline; pre-train on background (q, g) only, register the encoder as
``jbot-encoder@champion``, sweep a few anomaly-score settings and write the anomaly report from the registry
alias.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jbot.config import GenerateConfig, JbotConfig, load_config, with_overrides
from jbot.data.classes import CLASSES
from jbot.paths import resolve_tracking_uri


@dataclass(frozen=True)
class DemoSettings:
    out: Path = Path("data/demo")
    jets_per_class: int = 2000
    workers: int = 2
    epochs: int = 12
    finetune_epochs: int = 20
    anomaly_trials: int = 8
    seed: int = 1
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else the embedded store


def demo_config(settings: DemoSettings, preset: str, out_dir: Path) -> JbotConfig:
    cfg = load_config(None, [
        f"data.dir={settings.out / 'jets'}", f"data.preset={preset}", "pretrain.batch_size=256",
        f"pretrain.epochs={settings.epochs}", "pretrain.warmup_epochs=2", "pretrain.knn_every=4",
        f"pretrain.out_dir={out_dir}", f"finetune.epochs={settings.finetune_epochs}", "finetune.batch_size=256",
        "finetune.patience=6", "finetune.lr=1e-3", "finetune.fraction=0.1", "anomaly.reference_size=2000",
        "probe.silhouette_samples=2000", "tracking.log_system_metrics=false",
    ])
    return with_overrides(cfg, {"tracking.uri": resolve_tracking_uri(settings.tracking_uri)})


def run_demo(settings: DemoSettings, say: Callable[[str], None]) -> dict:
    """Each step is a tracked jbot command; returns what the summary prints."""
    from jbot.data.generate import generate
    from jbot.runs import tracked_anomaly, tracked_finetune, tracked_pretrain, tracked_probe
    from jbot.sweeps.objectives import anomaly_objective, run_sweep
    from jbot.sweeps.spaces import ParamSpec, load_space
    from jbot.sweeps.study import Sweep
    from jbot.tracking.mlflow import connect, store_uri
    from jbot.tracking.registry import register_best

    start = time.perf_counter()
    jets = settings.out / "jets"
    if not all((jets / f"{c}.hdf5").is_file() for c in CLASSES):
        say(f"1/6 generating {settings.jets_per_class} jets per class with Pythia8 + FastJet")
        generate(GenerateConfig(jets_per_class=settings.jets_per_class, workers=settings.workers,
                                seed=settings.seed), jets)
    else:
        say(f"1/6 using the jets already in {jets}")
    cfg5 = demo_config(settings, "5class", settings.out / "pretrain-5class")
    say("2/6 pre-training jBOT-S on 5 classes")
    pre = tracked_pretrain(cfg5, experiment="jbot-demo-pretrain")
    say("3/6 probing the frozen encoder")
    probe = tracked_probe(cfg5, pre.run_id, "5class", experiment="jbot-demo-probe")
    say("4/6 fine-tuning with 10 % of the labels, and the same from scratch")
    ft = tracked_finetune(cfg5, pre.run_id, out_dir=settings.out / "finetune", experiment="jbot-demo-finetune")
    fs = tracked_finetune(cfg5, None, out_dir=settings.out / "scratch", experiment="jbot-demo-finetune")
    cfgqg = demo_config(settings, "qg", settings.out / "pretrain-qg")
    say("5/6 pre-training on background (q, g) only and registering it as jbot-encoder@champion")
    qg = tracked_pretrain(cfgqg, experiment="jbot-demo-anomaly-pretrain")
    client = connect(store_uri(cfgqg))
    reg = register_best(client, "jbot-demo-anomaly-pretrain", "val/knn_acc", "jbot-encoder", "max", "champion")
    say(f"6/6 sweeping {settings.anomaly_trials} anomaly-score settings on the validation split, then the report "
        "from models:/jbot-encoder@champion")
    champion = "models:/jbot-encoder@champion"
    space = load_space("anomaly.yaml")
    narrow = space.model_copy(update={"params": {
        **space.params, "anomaly.reference_size": ParamSpec(type="int", low=500, high=2000, log=True)}})
    sweep = Sweep("anomaly", narrow, cfgqg, settings.anomaly_trials, {"model": champion, "demo": str(settings.out)},
                  storage=f"sqlite:///{(settings.out / 'optuna.db').resolve()}", experiment="jbot-demo-sweep-anomaly")
    outcome, summary = run_sweep(sweep, anomaly_objective(sweep, champion))
    tuned = with_overrides(cfgqg, summary.get("best_params", {}))
    note = (f"anomaly-score settings tuned by study {sweep.name} ({outcome.n_complete} trials) on the validation "
            "split's combined AUC, which uses labelled W, Z, t jets (as the paper tuned); test jets were not used "
            "for tuning (the settings table below holds the best trial's values)")
    anomaly = tracked_anomaly(tuned, champion, out_dir=settings.out / "anomaly", experiment="jbot-demo-anomaly",
                              notes=[note], tuned=True)
    return {"pretrain": pre, "probe": probe, "finetune": ft, "scratch": fs, "qg": qg, "registered": reg,
            "sweep": summary, "anomaly": anomaly, "seconds": time.perf_counter() - start,
            "uri": store_uri(cfgqg)}
