"""``jbot reproduce``: the paper's protocol end to end, at the scale a machine allows, as one MLflow parent run.

Steps (each a child run, in experiment ``jbot-reproduce``): 5-class pre-training; k-NN / linear probes and
clustering of it and of a randomly initialised encoder (Table 2's probe rows and the pre-training gain);
fine-tuning with 10 % and 100 % of the labels against the same from scratch (Table 2); top tagging on ``tqg``:
probe, fine-tuned and from scratch, with eps_s at eps_b = 0.1 / 0.01 / 0.001 (Table 3); q+g-only pre-training and
its anomaly scores (Table 4). The parent keeps each finished step's run id (tag ``jbot.step.<name>``): running the
same command again skips finished steps. The report (HTML) puts jbot's numbers, with fold errors and the run
that produced each, beside the paper's, and says for each claim whether it holds at this scale: a claim comparing
two runs on the paired bootstrap of their per-jet test outputs (``jbot.evaluate.bootstrap``, docs/method.md §7.5),
with its standard error and 95 % interval.

Two tables define it: ``STEPS`` (each step's runner and the paper's numbers for its metrics: the plan, the
collection and the report's rows all read it) and ``CLAIMS`` (the steps each claim compares, and its rule).
Adding a step is one ``STEPS`` entry; the model sizes come from ``jbot.model.sizes.SIZES``.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jbot.config import GenerateConfig, JbotConfig, flatten, load_config, with_overrides
from jbot.data.classes import CLASSES
from jbot.errors import JbotError
from jbot.io import atomic_write_text
from jbot.model import sizes
from jbot.model.sizes import model_label

EXPERIMENT = "jbot-reproduce"
STEP_TAG = "jbot.step."


def step_tag(step: str) -> str:
    """The parent's tag holding a finished step's run id (MLflow keys take no "%")."""
    return STEP_TAG + step.replace("%", "pct")


@dataclass(frozen=True)
class Scale:
    """How much of the paper's protocol a machine does: jets to generate per class when the data folder is empty
    (None: the real JetNet is required; q and g get ``background_factor`` times as many, for the q+g anomaly
    steps, which train on, take their reference from and test on background alone) and the config fields set on
    top of the chosen size's config."""

    name: str
    jets_per_class: int | None
    overrides: tuple[str, ...]
    budget: str
    background_factor: int = 1

    def generate_config(self, jets_per_class: int, workers: int, seed: int) -> GenerateConfig:
        """What to generate for this scale with ``jets_per_class`` signal jets per class."""
        background = jets_per_class * self.background_factor if self.background_factor > 1 else None
        return GenerateConfig(jets_per_class=jets_per_class, background_per_class=background, workers=workers,
                              seed=seed)


_SMALL = ("tracking.log_system_metrics=false",)
SCALES = {s.name: s for s in (
    Scale("demo", 2000, ("pretrain.epochs=12", "pretrain.batch_size=256", "pretrain.warmup_epochs=2",
                         "pretrain.knn_every=4", "finetune.epochs=20", "finetune.batch_size=256",
                         "finetune.patience=6", "finetune.lr=1e-3", "anomaly.reference_size=10000",
                         "probe.silhouette_samples=2000", *_SMALL), "about 12 minutes on 2 CPU cores",
          background_factor=3),
    Scale("cpu", 10000, ("pretrain.epochs=40", "pretrain.batch_size=256", "pretrain.warmup_epochs=4",
                         "pretrain.knn_every=5", "finetune.epochs=40", "finetune.batch_size=256",
                         "finetune.patience=8", "finetune.lr=1e-3", "anomaly.reference_size=10000",
                         "probe.silhouette_samples=5000", *_SMALL), "about an hour on 2 CPU cores"),
    Scale("paper", None, (), "the published sizes: JetNet, 100 epochs (a GPU)"),
)}


class ReproduceError(JbotError, RuntimeError):
    pass


@dataclass
class Plan:
    """The steps of one reproduction and where its pieces go."""

    scale: Scale
    size: str
    cfg: JbotConfig
    out: Path
    key: str
    study: Study
    steps: list[tuple[str, Runner]] = field(default_factory=list)  # (name, runner), in the order of the study's


@dataclass
class Context:
    parent: str
    done: dict[str, str]  # step -> run id


Runner = Callable[[Context], str]  # runs a step; returns its run id
StepFactory = Callable[[Plan, str], Runner]  # (plan, the step's name) -> its runner


def scale_config(scale: Scale, size: str) -> str:
    """The shipped config a scale starts from: the size's CPU recipe below the paper's scale (jBOT-S's), else
    Table 1's."""
    return sizes.SIZES[size].config_for(paper_scale=scale.jets_per_class is None)


def make_config(scale: Scale, size: str, data: Path, overrides: list[str], tracking_uri: str) -> JbotConfig:
    if size not in sizes.SIZES:
        raise ReproduceError(f"--size is one of {', '.join(sizes.SIZES)}, not {size!r}")
    cfg = load_config(scale_config(scale, size), [*scale.overrides, f"data.dir={data}", *overrides])
    return with_overrides(cfg, {"tracking.uri": tracking_uri})


# which of a study's steps run (each step is one variant or fraction, named by it): outside the plan's key, logged on
# the parent as tags (a resumed parent's params cannot change)
SELECTION = ("evaluate.ablation_variants", "evaluate.ablation_anomaly", "evaluate.label_fractions")


def plan_for(scale_name: str, size: str, data: Path, out: Path, overrides: list[str], tracking_uri: str,
             study_name: str = "paper") -> Plan:
    from jbot.commands.studies import study

    if scale_name not in SCALES:
        raise ReproduceError(f"--scale is one of {', '.join(SCALES)}, not {scale_name!r}")
    scale = SCALES[scale_name]
    cfg = make_config(scale, size, data, overrides, tracking_uri)
    chosen = study(study_name, cfg)
    check_tables(chosen)
    # the study's selection is not in the key: a later run naming more variants or fractions runs only those
    config = {k: v for k, v in flatten(cfg).items() if k not in SELECTION}
    identity = {"scale": scale.name, "size": size, "config": config, "out": str(out.resolve()),
                **({"study": chosen.name} if chosen.name != "paper" else {})}
    blob = json.dumps(identity, sort_keys=True, default=str)
    plan = Plan(scale, size, cfg, out, hashlib.sha1(blob.encode()).hexdigest()[:12], chosen)
    for step in chosen.steps:  # in order: a step's runner may take the run id of one listed before it
        plan.steps.append((step.name, step.run(plan, step.name)))
    return plan


def _cfg(plan: Plan, **fields: Any) -> JbotConfig:
    return with_overrides(plan.cfg, fields)


def _trained_on(plan: Plan, preset: str, variant: Variant | None = None) -> JbotConfig:
    """The plan's config on ``preset``, pre-training into ``<out>/pretrain-<preset>`` (with a ``variant``, its
    fields on top and ``-<variant>`` after the folder's name)."""
    folder = f"pretrain-{preset}" + ("" if variant is None else f"-{variant.name}")
    return _cfg(plan, **{"data.preset": preset, "pretrain.out_dir": str(plan.out / folder),
                         **({} if variant is None else dict(variant.fields))})


def _earlier(plan: Plan, name: str, step: str) -> str:
    """``step``, the name of a step listed before ``name`` (whose run id ``name``'s runner takes)."""
    if step not in (n for n, _ in plan.steps):
        raise ReproduceError(f"reproduce step {name!r} uses {step!r}, which is not a step listed before it")
    return step


@dataclass(frozen=True)
class Variant:
    """The method with some fields changed (an ablation): ``name`` in step and folder names, ``removes`` in words
    ("the [CLS] loss"), ``fields`` the config fields it sets."""

    name: str
    removes: str
    fields: tuple[tuple[str, Any], ...] = ()


def _pretrain(preset: str, variant: Variant | None = None) -> StepFactory:
    """Pre-training on ``preset`` (of ``variant``: the method with its fields changed)."""
    def make(plan: Plan, name: str) -> Runner:
        cfg = _trained_on(plan, preset, variant)
        run_name = f"pretrain-{model_label(cfg.model)}-{preset}-e{cfg.pretrain.epochs}" + (
            "" if variant is None else f"-{variant.name}")

        def run(ctx: Context) -> str:
            from jbot.commands.pretrain import tracked_pretrain

            return tracked_pretrain(cfg, experiment=EXPERIMENT, parent_run_id=ctx.parent, run_name=run_name).run_id
        return run
    return make


def _probe(preset: str, encoder: str | None) -> StepFactory:
    """Probes on ``preset`` of the encoder step ``encoder`` pre-trained (None: a randomly initialised one)."""
    def make(plan: Plan, name: str) -> Runner:
        cfg, out = _trained_on(plan, "5class"), plan.out
        source = None if encoder is None else _earlier(plan, name, encoder)

        def run(ctx: Context) -> str:
            from jbot.commands.probe import tracked_probe

            checkpoint = str(random_checkpoint(cfg, out / "random-encoder.pt")) if source is None else ctx.done[source]
            return tracked_probe(cfg, checkpoint, preset, out_dir=out / name, experiment=EXPERIMENT,
                                 parent_run_id=ctx.parent, run_name=name).run_id
        return run
    return make


def _finetune(task: str, fraction: float, encoder: str | None = None) -> StepFactory:
    """Fine-tuning on ``task`` with ``fraction`` of the labels, from the encoder step ``encoder`` (None: from
    scratch)."""
    def make(plan: Plan, name: str) -> Runner:
        cfg = with_overrides(_trained_on(plan, "5class"), {"finetune.task": task, "finetune.fraction": fraction})
        source, out = None if encoder is None else _earlier(plan, name, encoder), plan.out

        def run(ctx: Context) -> str:
            from jbot.commands.finetune import tracked_finetune

            return tracked_finetune(cfg, None if source is None else ctx.done[source], out_dir=out / name,
                                    experiment=EXPERIMENT, parent_run_id=ctx.parent).run_id
        return run
    return make


def _anomaly(preset: str, encoder: str) -> StepFactory:
    """Anomaly scores of the encoder step ``encoder``, pre-trained on ``preset`` (the background)."""
    def make(plan: Plan, name: str) -> Runner:
        cfg, source, out = _trained_on(plan, preset), _earlier(plan, name, encoder), plan.out

        def run(ctx: Context) -> str:
            from jbot.commands.anomaly import tracked_anomaly

            return tracked_anomaly(cfg, ctx.done[source], out_dir=out / name, experiment=EXPERIMENT,
                                   parent_run_id=ctx.parent).run_id
        return run
    return make


@dataclass(frozen=True)
class Step:
    """One step of the reproduction, a child run named ``name`` (tag ``jbot.step.<name>``). ``run(plan, name)``
    makes its runner. The report's rows: ``baseline``, metrics shown without a paper number; ``paper``, the
    paper's numbers beside which jbot's are shown (metric -> (source, value)); ``unrecorded``, quantities the paper
    reports whose values jbot does not record (metric -> (label, source))."""

    name: str
    run: StepFactory
    paper: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    baseline: tuple[str, ...] = ()
    unrecorded: Mapping[str, tuple[str, str]] = field(default_factory=dict)


BASELINE = "(baseline, not in the paper)"
_WORKING_POINTS = {f"test/eps_s_at_{eps}": (f"eps_s at eps_b = {eps}",
                                              "Table 3 (the paper's value is not carried in jbot)")
                   for eps in ("0.1", "0.01", "0.001")}

# The reproduction, in the order it runs, and the paper's numbers (JetNet) beside which jbot's are printed
STEPS: tuple[Step, ...] = (
    Step("pretrain-5class", _pretrain("5class")),
    Step("probe-random", _probe("5class", None), baseline=("test/knn_acc",)),
    Step("probe-5class", _probe("5class", "pretrain-5class"),
         paper={"test/knn_acc": ("Table 2, jBOT-S k-NN", 0.710), "test/linear_acc": ("Table 2, jBOT-S linear", 0.674)}),
    Step("finetune-10%-pretrained", _finetune("5class", 0.1, "pretrain-5class"),
         paper={"test/acc": ("Table 2, jBOT-S 10 %", 0.743)}),
    Step("finetune-10%-scratch", _finetune("5class", 0.1), paper={"test/acc": ("Table 2, supervised 10 %", 0.725)}),
    Step("finetune-100%-pretrained", _finetune("5class", 1.0, "pretrain-5class"),
         paper={"test/acc": ("Table 2, jBOT-B 100 %", 0.764)}),
    Step("finetune-100%-scratch", _finetune("5class", 1.0), paper={"test/acc": ("Table 2, supervised 100 %", 0.760)}),
    Step("probe-tqg", _probe("tqg", "pretrain-5class"), paper={"test/knn_auc": ("Table 3, k-NN", 0.945)}),
    Step("finetune-tqg-pretrained", _finetune("tqg", 1.0, "pretrain-5class"),
         paper={"test/auc": ("Table 3, jBOT-B fine-tuned", 0.958)}, unrecorded=_WORKING_POINTS),
    Step("finetune-tqg-scratch", _finetune("tqg", 1.0), paper={"test/auc": ("Table 3, supervised", 0.957)},
         unrecorded=_WORKING_POINTS),
    Step("pretrain-qg", _pretrain("qg")),
    Step("anomaly", _anomaly("qg", "pretrain-qg"),
         baseline=("test/knn/combined/max_sic", "test/knn/mass_rho/q", "test/knn/mass_rho/g",
                   *(f"test/knn/mass_jsd_inv/eps_b_{e}" for e in ("0.5", "0.1", "0.01")),
                   "test/knn/contaminated_0.01/combined/auc", "test/knn/contaminated_0.01/combined/max_sic"),
         paper={f"test/knn/{s}/auc": ("Table 4, k-NN", v) for s, v in (("W", 0.807), ("Z", 0.836), ("t", 0.836),
                                                                        ("combined", 0.826))}),
)


class Metrics:
    """One step's metrics: ``m[key]`` is (value, fold std), NaN where absent."""

    def __init__(self, values: Mapping[str, float]) -> None:
        self.values = values

    def __getitem__(self, key: str) -> tuple[float, float]:
        return self.values.get(key, float("nan")), self.values.get(f"{key}_std", float("nan"))


Verdict = tuple[bool, str]  # holds, and the report's text


@dataclass(frozen=True)
class Paired:
    """A claim on two steps judged by the paired bootstrap of their per-jet test outputs
    (``jbot.evaluate.bootstrap``): ``metric`` ("accuracy" or "auc") of the first step's minus the second's, which
    holds when the full-set difference is above ``threshold`` (at least it, with ``inclusive``) and holds clearly
    when the whole 95 % interval is. ``lead`` formats ``value`` (the difference ± its standard error)."""

    metric: str
    threshold: float
    lead: str
    inclusive: bool = False

    @property
    def digits(self) -> int:
        return 4 if self.metric == "auc" else 3


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, judged on the metrics of ``steps`` (names in STEPS): ``judge`` takes one Metrics per
    step, in that order. With ``paired`` the claim is judged by the paired bootstrap of its two steps' per-jet test
    outputs when both runs kept them (``predictions/test.npz``), else by ``judge``."""

    name: str
    steps: tuple[str, ...]
    judge: Callable[..., Verdict]
    paired: Paired | None = None
    # judged from a step's per-jet outputs instead, when they were kept: (outputs) -> the claim's entry or None
    per_jet: Callable[[_Outputs], dict[str, Any] | None] | None = None


def _pretraining_gain(trained: Metrics, random: Metrics) -> Verdict:
    gain = trained["test/knn_acc"][0] - random["test/knn_acc"][0]
    return gain >= 0.10, f"pre-training gain: {gain:+.3f} 5-class k-NN accuracy over a random encoder (needs >= +0.10)"


def _above_scratch(metric: str, text: str) -> Callable[[Metrics, Metrics], Verdict]:
    """Fine-tuned above from scratch by more than the larger fold std; ``text`` formats ``gap`` and ``margin``."""
    def judge(pretrained: Metrics, scratch: Metrics) -> Verdict:
        (ft, ft_std), (sc, sc_std) = pretrained[metric], scratch[metric]
        margin = max(ft_std, sc_std)
        return ft - sc > margin, text.format(gap=ft - sc, margin=margin)
    return judge


ANOMALY_AUC = 0.55  # what the anomaly claim needs of each signal's AUC


def _anomalies_bootstrapped(outputs: _Outputs) -> dict[str, Any] | None:
    """Each signal's k-NN AUC above 0.55, with its bootstrap interval over the test jets (the anomaly run's
    ``predictions/anomaly.npz``); holds within error when an interval reaches below 0.55."""
    est = outputs.anomaly_aucs("anomaly", "knn")
    if est is None or any(name not in est for name in ("W", "Z", "t")):
        return None
    aucs = {s: est[s] for s in ("W", "Z", "t")}
    holds = all(e.value > ANOMALY_AUC for e in aucs.values())
    clear = all(e.low > ANOMALY_AUC for e in aucs.values())
    n = next(iter(aucs.values())).n
    text = ("anomaly (k-NN score, q+g encoder): AUC " + ", ".join(
        f"{s} {e.value:.3f} ± {e.se:.3f} [{e.low:.3f}, {e.high:.3f}]" for s, e in aucs.items())
        + f" (needs > {ANOMALY_AUC} each; ± bootstrap SE, 95 % intervals, over each signal's and the background's "
        f"test jets, {n:,} for W" + ("" if clear or not holds else "; an interval reaches below 0.55: within error")
        + ")")
    return {"name": "anomaly", "holds": holds, "within_error": holds and not clear, "text": text,
            "aucs": {s: e.as_dict() for s, e in aucs.items()}}


def _anomalies_found(anomaly: Metrics) -> Verdict:
    """Each signal's full-set AUC above 0.55 (no per-jet anomaly scores are kept: the fold std, where logged, is
    printed beside each)."""
    aucs = {s: anomaly[f"test/knn/{s}/auc"] for s in ("W", "Z", "t")}
    with_std = all(std == std for _, std in aucs.values())
    return all(v > 0.55 for v, _ in aucs.values()), ("anomaly (k-NN score, q+g encoder): AUC " + ", ".join(
        f"{s} {v:.3f}" + (f" ± {std:.3f}" if with_std else "") for s, (v, std) in aucs.items())
        + " (needs > 0.55 each" + ("; ± fold std)" if with_std else ")"))


CLAIMS: tuple[Claim, ...] = (
    Claim("pretraining_gain", ("probe-5class", "probe-random"), _pretraining_gain,
          Paired("accuracy", 0.10, "pre-training gain: {value} 5-class k-NN accuracy over a random encoder",
                 inclusive=True)),
    *(Claim(f"finetune_{pct}", (f"finetune-{pct}%-pretrained", f"finetune-{pct}%-scratch"), _above_scratch(
        "test/acc", f"fine-tuned above from scratch with {pct}% of the labels: {{gap:+.3f}} accuracy "
                    "(fold std {margin:.3f})"),
        Paired("accuracy", 0.0, f"fine-tuned above from scratch with {pct}% of the labels: {{value}} accuracy"))
      for pct in ("10", "100")),
    Claim("top_tagging", ("finetune-tqg-pretrained", "finetune-tqg-scratch"), _above_scratch(
        "test/auc", "top tagging, fine-tuned above from scratch: {gap:+.4f} AUC (fold std {margin:.4f})"),
        Paired("auc", 0.0, "top tagging, fine-tuned above from scratch: {value} AUC")),
    Claim("anomaly", ("anomaly",), _anomalies_found, per_jet=_anomalies_bootstrapped),
)


def _threshold_text(threshold: float) -> str:
    return "0" if threshold == 0 else f"{threshold:+.2f}"


def paired_verdict(claim: Claim, diff: Any) -> dict[str, Any]:
    """The claim's entry from the paired bootstrap ``diff`` (a ``jbot.evaluate.bootstrap.Estimate``): ``holds`` on
    the full-set difference, ``within_error`` when it holds but the 95 % interval does not clear the threshold."""
    assert claim.paired is not None
    rule, d = claim.paired, claim.paired.digits
    thr = _threshold_text(rule.threshold)
    holds = bool(diff.value >= rule.threshold if rule.inclusive else diff.value > rule.threshold)
    clear = diff.excludes(rule.threshold)
    if clear:
        where = f"excludes {thr}" if rule.threshold == 0 else f"lies above {thr}"
    elif diff.high < rule.threshold:
        where = f"lies below {thr}"
    else:
        where = (f"does not exclude {thr}" if rule.threshold == 0 else f"does not lie above {thr}") + (
            ": within error" if holds else "")
    value = f"{diff.value:+.{d}f} ± {diff.se:.{d}f}"
    text = (rule.lead.format(value=value) + f" (needs {'>=' if rule.inclusive else '>'} {thr}; paired bootstrap over "
            f"{diff.n:,} test jets, {diff.level * 100:.0f} % interval [{diff.low:+.{d}f}, {diff.high:+.{d}f}] {where})")
    return {"name": claim.name, "holds": holds, "within_error": holds and not clear, "text": text,
            "paired": {"metric": rule.metric, "threshold": rule.threshold, "steps": list(claim.steps),
                       **diff.as_dict()}}


def verdict(claim: Mapping[str, Any]) -> str:
    """'holds', 'holds, within error' or 'does not hold': a claim entry's verdict as the report prints it."""
    if not claim["holds"]:
        return "does not hold"
    return "holds, within error" if claim.get("within_error") else "holds"


@dataclass(frozen=True)
class Study:
    """What one ``jbot reproduce --study`` runs (``jbot.commands.studies.STUDIES``): its ``steps`` and ``claims``
    (for the paper's protocol, ``STEPS`` and ``CLAIMS``), the presets its steps read (a param of the parent),
    ``title`` (the report's heading and the parent's note) and, optionally, ``section``: more of the report from
    the collected numbers (``Collected`` -> entries added to the summary, "claims" appended to its claims) with
    ``html`` (the summary -> the section's HTML); ``difference`` says what its paired claims subtract."""

    name: str
    title: str
    steps: tuple[Step, ...]
    claims: tuple[Claim, ...]
    presets: str
    section: Callable[[Collected], dict[str, Any]] | None = None
    html: Callable[[dict[str, Any]], str] | None = None
    difference: str = "pre-trained - baseline"  # what its paired claims subtract (the claims plot's axis)

    @property
    def folder(self) -> str:
        """The default output folder's stem: runs/<stem>-<scale>-<size>."""
        return "reproduce" if self.name == "paper" else self.name


@dataclass
class Collected:
    """What a study's ``section`` reads: each step's metrics, the steps' per-jet outputs and the claims so far."""

    metrics: dict[str, dict[str, float]]
    outputs: _Outputs
    claims: list[dict[str, Any]]


def check_tables(study: Study) -> None:
    """Step names unique; every claim on steps of the table."""
    names = [s.name for s in study.steps]
    twice = sorted({n for n in names if names.count(n) > 1})
    unknown = sorted({f"{c.name}: {s}" for c in study.claims for s in c.steps if s not in names})
    if twice or unknown:
        raise ReproduceError("the reproduce tables are inconsistent: " + "; ".join(
            [*(f"step {n!r} listed twice" for n in twice), *(f"claim {u!r} is not a step" for u in unknown)]))


def random_checkpoint(cfg: JbotConfig, path: Path) -> Path:
    """An untrained encoder of the same architecture and size (seeded by pretrain.seed): the baseline of the
    pre-training gain."""
    import torch

    from jbot.model.registry import build_encoder
    from jbot.train.checkpoint import save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.pretrain.seed)
        encoder = build_encoder(cfg.model)
    return save_checkpoint(path, {"kind": "encoder", "config": {"model": cfg.model.model_dump(mode="json")},
                                  "encoder": encoder.state_dict()})


def ensure_data(plan: Plan, workers: int, seed: int, say: Callable[[str], None]) -> None:
    """Generate jets when the data folder lacks class files (demo and cpu scales); the paper scale needs JetNet."""
    from jbot.data.jetnet import class_file

    data = Path(plan.cfg.data.dir)
    if all(class_file(data, c).is_file() for c in CLASSES):
        return
    if plan.scale.jets_per_class is None:
        raise ReproduceError(f"{data} holds no JetNet files: the paper scale runs on the real JetNet "
                             f"(`jbot data fetch --out {data}`)")
    from jbot.data.generate import generate

    gen = plan.scale.generate_config(plan.scale.jets_per_class, workers, seed)
    say(f"generating {generated_text(gen)} with Pythia8 + FastJet (seed {seed}) in {data}")
    generate(gen, data)


def generated_text(cfg: GenerateConfig) -> str:
    """'2000 jets per class' or '6000 q and g, 2000 W, Z and t jets each'."""
    if cfg.background_per_class is None:
        return f"{cfg.jets_per_class} jets per class"
    return f"{cfg.background_per_class} q and g, {cfg.jets_per_class} W, Z and t jets each"


def _parent(plan: Plan) -> tuple[str, dict[str, str]]:
    """The parent run of this reproduction (found by its key: resumed) or a new one; finished steps' run ids."""
    from jbot.redaction import public_config, redact
    from jbot.tracking.mlflow import MlflowRun, connect, experiment_id, git_commit, store_uri

    uri = store_uri(plan.cfg)
    client = connect(uri)
    exp = experiment_id(client, EXPERIMENT, uri)
    found = client.search_runs([exp], f"tags.`jbot.reproduce_key` = '{plan.key}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    selection = {f"reproduce.{k}": str(v) for k, v in flatten(plan.cfg).items() if k in SELECTION}
    if found:
        run = found[0]
        client.update_run(run.info.run_id, status="RUNNING")
        MlflowRun(client, run.info.run_id).set_tags(selection)
        done = {name: run.data.tags[step_tag(name)] for name, _ in plan.steps if step_tag(name) in run.data.tags}
        finished = {s: r for s, r in done.items() if client.get_run(r).info.status == "FINISHED"}
        return run.info.run_id, finished
    study = plan.study
    run = client.create_run(exp, run_name=f"{study.folder}-{plan.scale.name}-{plan.size}", tags={
        "jbot.reproduce_key": plan.key, "jbot.role": "reproduce-parent", "jbot.git_commit": git_commit(),
        "jbot.study": study.name, **selection,
        "mlflow.note.content": f"{study.title} at the {plan.scale.name} scale ({plan.scale.budget}), jBOT-{plan.size}"})
    # its steps run on several splits: the parent names them all instead of one data.preset
    params = {k: v for k, v in flatten(public_config(plan.cfg)).items() if k != "data.preset" and k not in SELECTION}
    MlflowRun(client, run.info.run_id).log_params({**params, "reproduce.presets": study.presets,
                                                   "reproduce.study": study.name,
                                                   "tracking.uri": redact(uri),
                                                   "reproduce.scale": plan.scale.name, "reproduce.size": plan.size,
                                                   "reproduce.config": scale_config(plan.scale, plan.size)})
    return run.info.run_id, {}


def metric_key(text: str) -> str:
    """A step, claim or quantity name as part of an MLflow metric key (letters, digits, ``_-. /`` only)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text.replace("%", "pct"))


def parent_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The parent's verdicts and key numbers as metrics, so the runs table can sort and chart them:
    ``claim/<name>`` (1 holds, 0.5 holds within error, 0 does not), ``claim/<name>/difference`` (the paired
    difference), ``<step>/<metric>`` for each row of the report that is a test metric."""
    out: dict[str, float] = {}
    for claim in summary["claims"]:
        key = f"claim/{metric_key(claim['name'])}"
        out[key] = 0.0 if not claim["holds"] else 0.5 if claim.get("within_error") else 1.0
        if "paired" in claim:
            out[f"{key}/difference"] = float(claim["paired"]["value"])
    for row in summary.get("rows", []):
        step, _, quantity = str(row["quantity"]).partition(": ")
        value = row.get("jbot")
        if quantity.startswith("test/") and isinstance(value, (int, float)) and value == value:
            out[metric_key(f"{step}/{quantity.removeprefix('test/')}")] = float(value)
    return out


def run_reproduction(plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    """Run (or finish) every step; returns the report's numbers. A failing step ends the parent FAILED and
    keeps the finished steps for the next run of the same command."""
    from jbot.tracking.mlflow import MlflowRun, connect, store_uri, ui_base

    client = connect(store_uri(plan.cfg))
    parent, done = _parent(plan)
    ctx = Context(parent, done)
    start = time.perf_counter()
    try:
        for i, (name, step) in enumerate(plan.steps, start=1):
            if name in done:
                say(f"{i}/{len(plan.steps)} {name}: done earlier (run {done[name]})")
                continue
            say(f"{i}/{len(plan.steps)} {name}")
            done[name] = step(ctx)
            client.set_tag(parent, step_tag(name), done[name])
        summary = collect(client, done, plan.study)
        summary.update(study=plan.study.name, title=plan.study.title, scale=plan.scale.name,
                       budget=plan.scale.budget, size=plan.size, parent=parent,
                       config=scale_config(plan.scale, plan.size),
                       seconds=time.perf_counter() - start, data=str(plan.cfg.data.dir),
                       ui=ui_base(str(plan.cfg.tracking.uri)),
                       experiments={r: client.get_run(r).info.experiment_id for r in (parent, *done.values())})
        report = write_report(plan.out / "reproduce.html", summary)
        atomic_write_text(plan.out / "reproduce.json", json.dumps(
            {k: v for k, v in summary.items() if not k.startswith("_")}, indent=2, default=str))
        client.log_artifact(parent, str(report), "report")
        client.log_artifact(parent, str(plan.out / "reproduce.json"), "report")
        for claim in summary["claims"]:
            client.set_tag(parent, f"claim.{claim['name']}", verdict(claim))
        MlflowRun(client, parent).log_metrics(parent_metrics(summary))
    except KeyboardInterrupt as exc:  # Ctrl-C or a stop signal: the running step's run is KILLED by its own command
        from jbot import signals

        client.set_tag(parent, "jbot.stopped", signals.describe(exc))
        client.set_terminated(parent, "KILLED")
        raise
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    summary["report"] = str(report)
    return summary


def collect(client: Any, done: dict[str, str], study: Study | None = None) -> dict[str, Any]:
    """Every step's test metrics (by step), the claims and the rows of the report: the baselines, then the paper's
    numbers, then the paper's quantities jbot does not record, each in the order of the study's steps (default:
    the paper's protocol); then the study's own section."""
    import tempfile

    from jbot.evaluate.metrics import unresolved

    if study is None:
        from jbot.commands.studies import study as find

        study = find("paper")
    metrics = {name: dict(client.get_run(run_id).data.metrics) for name, run_id in done.items()}
    with tempfile.TemporaryDirectory(prefix="jbot-reproduce-") as folder:
        outputs = _Outputs(client, done, Path(folder))
        claims = []
        for claim in study.claims:
            diff = outputs.paired(claim)
            if diff is not None:
                claims.append(paired_verdict(claim, diff))
                continue
            entry = claim.per_jet(outputs) if claim.per_jet is not None else None
            if entry is not None:
                claims.append(entry)
                continue
            holds, text = claim.judge(*(Metrics(metrics.get(step, {})) for step in claim.steps))
            claims.append({"name": claim.name, "holds": holds, "text": text})

        def row(step: str, key: str, quantity: str, paper: float | None, source: str) -> dict[str, Any]:
            m = metrics.get(step, {})
            v, std = Metrics(m)[key]
            se = outputs.se(step, key)
            return {"quantity": f"{step}: {quantity}", "jbot": v, "std": std, "run": done.get(step, ""),
                    "paper": paper, "paper_source": source, **({"se": se} if se is not None else {}),
                    **({"unresolved": int(m.get(f"{key}_n_bkg", 0))} if unresolved(m, key) else {})}

        rows = [row(s.name, key, key, None, BASELINE) for s in study.steps for key in s.baseline]
        rows += [row(s.name, key, key, paper, source) for s in study.steps
                 for key, (source, paper) in s.paper.items()]
        rows += [row(s.name, key, label, None, source) for s in study.steps
                 for key, (label, source) in s.unrecorded.items()]
        extra = {} if study.section is None else study.section(Collected(metrics, outputs, claims))
    claims += extra.pop("claims", [])
    return {"claims": claims, "rows": rows, "runs": done, "errors": ERRORS_TEXT, **extra}


# a row's metric -> (the bootstrap metric, the kind of per-jet outputs it is computed from)
_PER_JET = {"test/acc": ("accuracy", "classifier"), "test/auc": ("auc", "classifier"),
            "test/knn_acc": ("accuracy", "knn"), "test/knn_auc": ("auc", "knn")}


class _Outputs:
    """The steps' per-jet test outputs (``predictions/test.npz``), downloaded once each; None where a run kept
    none (or the client cannot download: a step of an older jbot, a test's fake client)."""

    def __init__(self, client: Any, done: Mapping[str, str], folder: Path) -> None:
        self.client, self.done, self.folder = client, done, folder
        self.cache: dict[str, Any] = {}

    def get(self, step: str) -> Any:
        if step not in self.cache:
            self.cache[step] = self._load(step)
        return self.cache[step]

    def _load(self, step: str) -> Any:
        download = getattr(self.client, "download_artifacts", None)
        if download is None or step not in self.done:
            return None
        from jbot.evaluate.bootstrap import PREDICTIONS, BootstrapError, load_predictions
        from jbot.tracking.mlflow import MlflowError

        run_id = self.done[step]
        try:
            return load_predictions(download(run_id, PREDICTIONS, str(self._dst(run_id))))
        except (MlflowError, OSError, BootstrapError, ValueError):
            return None

    def _dst(self, run_id: str) -> Path:
        dst = self.folder / run_id
        dst.mkdir(parents=True, exist_ok=True)
        return dst

    def paired(self, claim: Claim) -> Any:
        """The paired bootstrap of the claim's two steps, or None when it is not paired or an output is missing or
        not on the same test jets."""
        if claim.paired is None or len(claim.steps) != 2:
            return None
        a, b = (self.get(step) for step in claim.steps)
        if a is None or b is None or not a.paired_with(b):
            return None
        from jbot.evaluate.bootstrap import BootstrapError, paired_bootstrap

        metric = claim.paired.metric
        try:
            first, second = ((p.pred if metric == "accuracy" else p.probs) for p in (a, b))
            return paired_bootstrap(a.y, first, second, metric)
        except BootstrapError:
            return None

    def artifact(self, step: str, path: str) -> Path | None:
        """The step's artifact ``path``, downloaded; None where the run has none (or the client cannot download)."""
        download = getattr(self.client, "download_artifacts", None)
        if download is None or step not in self.done:
            return None
        from jbot.tracking.mlflow import MlflowError

        try:
            return Path(download(self.done[step], path, str(self._dst(self.done[step]))))
        except (MlflowError, OSError):
            return None

    def anomaly_aucs(self, step: str, score: str) -> dict[str, Any] | None:
        """The bootstrap of each signal's AUC of ``score`` from the step's per-jet anomaly scores, or None."""
        from jbot.evaluate.bootstrap import ANOMALY_SCORES, BootstrapError, anomaly_auc_bootstrap

        path = self.artifact(step, ANOMALY_SCORES)
        if path is None:
            return None
        try:
            return anomaly_auc_bootstrap(path, score)
        except (OSError, BootstrapError, ValueError, KeyError):
            return None

    def se(self, step: str, key: str) -> float | None:
        """The bootstrap standard error of a row's full-set number, where its step kept the outputs it is from."""
        if key not in _PER_JET:
            return None
        metric, kind = _PER_JET[key]
        p = self.get(step)
        if p is None or p.kind != kind:
            return None
        from jbot.evaluate.bootstrap import BootstrapError, bootstrap

        try:
            return bootstrap(p.y, p.pred if metric == "accuracy" else p.probs, metric).se
        except BootstrapError:
            return None


ERRORS_TEXT = (
    "What ± means. In the table of numbers, ± is the fold std: the std of the metric over stratified folds of the "
    "test split (evaluate.n_folds, each fold a 1/k of the test jets), about sqrt(k) times the error of the full-set "
    "number shown; SE, where shown, is the bootstrap standard error of that full-set number (1,000 resamples of "
    "the test jets, seed 0). In a claim, ± is the standard error of the paired bootstrap difference: both runs' "
    "per-jet test outputs evaluated on the same 1,000 resamples of the same test jets, with the 95 % percentile "
    "interval. A claim holds when its full-set difference passes its threshold and holds within error when it "
    "does but the interval does not clear the threshold. The anomaly claim's ± is each AUC's bootstrap standard "
    "error over the test jets of that signal and the background, with its 95 % interval. A claim without per-jet "
    "outputs (runs of an older jbot) is judged on its full-set numbers against the fold std, as its line says.")


def claims_figure(claims: list[dict[str, Any]], difference: str = "pre-trained - baseline") -> Any:
    """Each paired claim's difference with its 95 % interval, beside the threshold it must clear; None if none."""
    import plotly.graph_objects as go

    paired = [c for c in claims if "paired" in c]
    if not paired:
        return None
    names = [c["name"] for c in paired]
    p = [c["paired"] for c in paired]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[q["value"] for q in p], y=names, mode="markers", name="paired difference (95 % interval)",
        marker={"size": 10, "color": ["#2ca02c" if c["holds"] and not c.get("within_error") else
                                      "#ff7f0e" if c["holds"] else "#d62728" for c in paired]},
        error_x={"type": "data", "symmetric": False, "array": [q["high"] - q["value"] for q in p],
                 "arrayminus": [q["value"] - q["low"] for q in p]}))
    fig.add_trace(go.Scatter(x=[q["threshold"] for q in p], y=names, mode="markers", name="threshold to clear",
                             marker={"symbol": "line-ns-open", "size": 18, "color": "#444"}))
    fig.update_layout(title="Claims: paired difference on the same test jets (green holds, orange holds within "
                      "error, red does not)", xaxis_title=f"difference ({difference})",
                      template="plotly_white", height=140 + 50 * len(paired), legend={"orientation": "h", "y": -0.3})
    return fig


def numbers_figure(rows: list[dict[str, Any]]) -> Any:
    """jbot's numbers (with their bootstrap SE where known) beside the paper's; None if no row has a paper value."""
    import plotly.graph_objects as go

    shown = [r for r in rows if r.get("paper") is not None and r.get("jbot") == r.get("jbot")
             and r.get("jbot") is not None]
    if not shown:
        return None
    labels = [r["quantity"] for r in shown]
    fig = go.Figure([
        go.Bar(x=labels, y=[r["jbot"] for r in shown], name="jbot (this data)",
               error_y={"type": "data", "array": [r.get("se", 0.0) for r in shown]}),
        go.Bar(x=labels, y=[r["paper"] for r in shown], name="paper (JetNet, published sizes)"),
    ])
    fig.update_layout(barmode="group", title="jbot's numbers beside the paper's (error bars: bootstrap SE)",
                      template="plotly_white", height=420, yaxis_title="value")
    return fig


def plotly_js() -> str:
    """plotly.js itself, inlined once in a report's head (the report renders offline; its figures and a study's
    section add only their divs)."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def write_report(path: Path, summary: dict[str, Any]) -> Path:
    esc = html.escape

    def num(v: float | None, digits: int = 3) -> str:
        return "-" if v is None or v != v else f"{v:.{digits}f}"

    base, experiments = summary.get("ui", "http://127.0.0.1:5000"), summary.get("experiments", {})

    def link(run_id: str) -> str:
        if not run_id or run_id not in experiments:
            return f"<code>{esc(str(run_id))}</code>"
        from jbot.tracking.mlflow import run_link

        return (f"<a href='{esc(run_link(base, str(experiments[run_id]), run_id))}'>"
                f"<code>{esc(run_id[:8])}</code></a>")

    from jbot.commands.studies import study as find

    chosen = find(summary.get("study", "paper"))
    section = chosen.html
    figures = [f for f in (claims_figure(summary["claims"], chosen.difference), numbers_figure(summary["rows"]))
               if f is not None]
    plots = "".join(fig.to_html(full_html=False, include_plotlyjs=False) for fig in figures)
    took = summary.get("seconds")
    took_text = f" This run took {took / 60:.1f} min." if isinstance(took, (int, float)) else ""

    claims = "".join(f"<li><b>{verdict(c)}</b>: {esc(c['text'])}</li>" for c in summary["claims"])
    rows = "".join(
        f"<tr><td>{esc(r['quantity'])}</td><td>{num(r['jbot'])} "
        + (f"(not resolved: {r['unresolved']} background jets)" if "unresolved" in r else f"± {num(r['std'])}")
        + (f" (SE {num(r['se'])})" if "se" in r else "")
        + f"</td><td>{link(str(r['run']))}"
        f"</td><td>{num(r['paper'])}</td><td>{esc(r['paper_source'])}</td></tr>" for r in summary["rows"])
    anomaly_text = ("<p>The anomaly step's own report, with each score's SIC curve, the background's jet mass before "
                    "and after cuts and the contaminated-reference table: <a href='anomaly/anomaly_report.html'>"
                    "anomaly/anomaly_report.html</a> (also in that run's artifacts). Its max SIC, &rho;(score, mass) "
                    "and 1/JSD rows are below (max SIC and 1/JSD: higher is better; |&rho;| near 0 sculpts "
                    "least).</p>" if "anomaly" in summary.get("runs", {}) else "")
    name, title = esc(summary.get("study", "paper")), esc(summary.get("title", "The paper's claims"))
    scale = esc(summary["scale"])
    budget = f" ({esc(summary['budget'])})" if summary.get("study", "paper") == "paper" else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>jbot reproduce {name}: {scale}</title>
<script>{plotly_js()}</script>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>{title} at the {esc(summary['scale'])} scale (jBOT-{esc(summary['size'])})</h1>
<p>Scale: {esc(summary['scale'])}{budget}.{took_text} Config
<code>{esc(summary.get('config', ''))}</code> with the scale's sizes on top; data: <code>{esc(summary['data'])}</code>;
MLflow parent run {link(str(summary['parent']))} (experiment {EXPERIMENT}; run links open the MLflow UI at
<code>{esc(base)}</code>: start it with <code>jbot ui</code>). jbot's numbers are on jbot's test split of these
jets; the paper's are on JetNet at the published sizes, so they compare the method, not these numbers one for
one.</p>
<p>{esc(ERRORS_TEXT)}</p>
<h2>Claims</h2><ul>{claims}</ul>
{plots}
{anomaly_text}
{'' if section is None else section(summary)}
<h2>Numbers</h2>
<table><tr><th>quantity</th><th>jbot</th><th>jbot run</th><th>paper</th><th>paper source</th></tr>{rows}</table>
</body></html>"""
    return atomic_write_text(path, page)
