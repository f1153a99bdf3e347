"""The sweep kinds, one entry each: ``jbot sweep <kind>`` is built from this table (``cli.py`` has no per-kind
code). A new kind is a search space ``jbot/configs/sweeps/<kind>.yaml``, an objective in ``commands/sweep.py`` and
an entry here. Importing this module loads nothing heavy: objectives are imported when a sweep starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jbot.config import ConfigError
from jbot.data.classes import CLASS_LABELS, SIGNALS

if TYPE_CHECKING:
    import optuna

    from jbot.config import JbotConfig
    from jbot.sweeps.study import Sweep, SweepOutcome

Objective = Callable[["optuna.Trial", str], float]
Finish = Callable[["SweepOutcome"], dict[str, Any]]


@dataclass(frozen=True)
class Option:
    """A kind's own command-line option; with ``field`` set, its value overrides that config field and names
    the study (two sweeps that differ in it are different studies)."""

    name: str
    type: Any
    help: str
    field: str | None = None


# What `jbot.anomaly.detect.signal_metrics` reports per signal (W, Z, t and combined), named here without loading
# torch: `<signal>/auc`, `<signal>/tpr_at_fpr_<f>` for its FPR_TARGETS and `<signal>/max_sic`; and the
# decorrelation-penalised `combined/auc_decorrelated` (data with a jet mass)
SIGNAL_METRICS = (*(f"{signal}/{metric}" for signal in (*(CLASS_LABELS[s] for s in SIGNALS), "combined")
                    for metric in ("auc", "tpr_at_fpr_0.1", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "max_sic")),
                  "combined/auc_decorrelated")


@dataclass(frozen=True)
class SweepKind:
    name: str
    help: str
    trials: int  # the default budget of COMPLETE trials
    uses_model: bool  # takes --model (an encoder source)
    preset: Callable[[JbotConfig], str | None]  # the split whose class files must exist
    start: Callable[[Sweep, str | None, dict[str, Any], Path], tuple[Objective, Finish | None]]
    objectives: tuple[str, ...] = ()  # the metrics a trial returns, any of which a space's `objective` may name
    options: tuple[Option, ...] = ()
    note: str | None = None  # printed after the study summary

    def check_objective(self, objective: str, where: str) -> None:
        """``objective`` (of the search space ``where``) is a metric this kind's trials report."""
        if objective not in self.objectives:
            shown = [m for m in self.objectives if "/tpr_at_fpr_" not in m]
            more = " (or tpr_at_fpr_0.1, _0.01, _0.001 in place of auc)" if len(shown) < len(self.objectives) else ""
            raise ConfigError(f"{where}: objective {objective!r} is not a metric `jbot sweep {self.name}` trials "
                              f"report; choose from {', '.join(shown)}{more}")


def _finetune(sweep: Sweep, model: str | None, options: dict[str, Any], work: Path) -> tuple[Objective, Finish]:
    from jbot.commands.sweep import finetune_objective, finish_finetune

    assert model is not None
    return (finetune_objective(sweep, model, work),
            lambda outcome: finish_finetune(sweep, outcome, options.get("register")))


def _anomaly(sweep: Sweep, model: str | None, options: dict[str, Any], work: Path) -> tuple[Objective, None]:
    from jbot.commands.sweep import anomaly_objective

    assert model is not None
    return anomaly_objective(sweep, model), None


def _pretrain(sweep: Sweep, model: str | None, options: dict[str, Any], work: Path) -> tuple[Objective, None]:
    from jbot.commands.sweep import pretrain_objective

    return pretrain_objective(sweep, work), None


KINDS: dict[str, SweepKind] = {kind.name: kind for kind in (
    SweepKind("finetune", "Search LLRD decay, learning rate (and dropout, batch size) on validation accuracy; test "
              "metrics of the best trial once at the end.", 30, True, lambda cfg: cfg.finetune.task, _finetune,
              # what tracked_finetune returns without the test split (jbot.runs)
              ("val/best_acc", "train/best_epoch", "train/n_jets", "system/wall_seconds"),
              (Option("fraction", float | None, "Class-balanced share of the training split", "finetune.fraction"),
               Option("register", str | None, "Register the best trial's classifier under this name"))),
    SweepKind("anomaly", "Tune anomaly-score settings on the validation split's combined AUC (labelled W, Z, t, as "
              "the paper did).", 30, True, lambda cfg: "qg", _anomaly, tuple(f"val/{m}" for m in SIGNAL_METRICS),
              note="note: tuned on labelled W, Z, t jets of the validation split; run `jbot anomaly` with the best "
                   "settings (--set anomaly.<field>=...) for test metrics"),
    SweepKind("pretrain", "Search model size, masking, temperatures, KoLeo weight and learning rate on the "
              "validation k-NN probe accuracy (reported every pretrain.knn_every epochs, pruned by the median rule).",
              10, False, lambda cfg: None, _pretrain,
              ("val/knn_acc", *(f"val/anomaly/{m}" for m in SIGNAL_METRICS))),  # objectives.ANOMALY_PREFIX
)}
