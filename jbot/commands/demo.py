"""The end-to-end demo behind ``make demo`` / ``jbot demo``, on the embedded MLflow store.

Generate jets with Pythia8; run ``jbot reproduce --scale demo`` on them (the paper's protocol with the CPU
recipe: pre-training on 5 classes, probes of it and of a random encoder, fine-tuning with 10 % and 100 % of the
labels against the same from scratch, top tagging, pre-training on background (q, g) and anomaly scores), with a
verdict per claim and its report; then the MLOps tour: register the background encoder as
``jbot-encoder@champion``, sweep a few anomaly-score settings on the validation split and write the anomaly
report from the registry alias.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jbot.config import with_overrides
from jbot.data.classes import CLASSES
from jbot.paths import resolve_tracking_uri


@dataclass(frozen=True)
class DemoSettings:
    out: Path = Path("data/demo")
    jets_per_class: int = 2000
    workers: int = 2
    epochs: int | None = None  # None: the demo scale's
    anomaly_trials: int = 8
    seed: int = 1
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else the embedded store
    overrides: tuple[str, ...] = ()  # --set items on top of the demo scale's config


def run_demo(settings: DemoSettings, say: Callable[[str], None]) -> dict:
    """Each step is a tracked jbot command; returns what the summary prints."""
    from jbot.commands.anomaly import tracked_anomaly
    from jbot.commands.reproduce import SCALES, generated_text, plan_for, run_reproduction
    from jbot.commands.sweep import anomaly_objective, run_sweep
    from jbot.data.generate import generate
    from jbot.sweeps.spaces import ParamSpec, load_space
    from jbot.sweeps.study import Sweep
    from jbot.tracking.mlflow import connect, store_uri
    from jbot.tracking.registry import register_best

    start = time.perf_counter()
    jets = settings.out / "jets"
    if not all((jets / f"{c}.hdf5").is_file() for c in CLASSES):
        gen = SCALES["demo"].generate_config(settings.jets_per_class, settings.workers, settings.seed)
        say(f"generating {generated_text(gen)} with Pythia8 + FastJet")
        generate(gen, jets)
    else:
        say(f"using the jets already in {jets}")
    overrides = [*(f"pretrain.epochs={settings.epochs}",) * (settings.epochs is not None), *settings.overrides]
    plan = plan_for("demo", "S", jets, settings.out / "reproduce", overrides,
                    resolve_tracking_uri(settings.tracking_uri))
    say(f"the paper's protocol at the demo scale ({len(plan.steps)} steps; `jbot reproduce --scale demo`)")
    science = run_reproduction(plan, lambda text: say(f"  {text}"))
    cfgqg = with_overrides(plan.cfg, {"data.preset": "qg"})
    client = connect(store_uri(cfgqg))
    say("registering the background (q, g) encoder as jbot-encoder@champion")
    reg = register_best(client, "jbot-reproduce", "val/knn_acc", "jbot-encoder", "max", "champion",
                        filter_string="params.`data.preset` = 'qg'", parent_run_id=science["parent"])
    say(f"sweeping {settings.anomaly_trials} anomaly-score settings on the validation split, then the report "
        "from models:/jbot-encoder@champion")
    champion = "models:/jbot-encoder@champion"
    space = load_space("anomaly.yaml")
    most = cfgqg.anomaly.reference_size  # the scale's reference: all the background training jets at the demo scale
    narrow = space.model_copy(update={"params": {
        **space.params, "anomaly.reference_size": ParamSpec(type="int", low=max(1, most // 10), high=most, log=True)}})
    sweep = Sweep("anomaly", narrow, cfgqg, settings.anomaly_trials, {"model": champion, "demo": str(settings.out)},
                  storage=f"sqlite:///{(settings.out / 'optuna.db').resolve()}", experiment="jbot-demo-sweep-anomaly")
    outcome, summary = run_sweep(sweep, anomaly_objective(sweep, champion))
    tuned = with_overrides(cfgqg, summary.get("best_params", {}))
    note = (f"anomaly-score settings tuned by study {sweep.name} ({outcome.n_complete} trials) on the validation "
            "split's combined AUC, which uses labelled W, Z, t jets (as the paper tuned); test jets were not used "
            "for tuning (the settings table below holds the best trial's values)")
    anomaly = tracked_anomaly(tuned, champion, out_dir=settings.out / "anomaly", experiment="jbot-demo-anomaly",
                              notes=[note], tuned=True)
    return {"science": science, "registered": reg, "sweep": summary, "anomaly": anomaly,
            "seconds": time.perf_counter() - start, "uri": store_uri(cfgqg)}
