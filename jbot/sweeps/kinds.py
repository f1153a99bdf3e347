"""The sweep kinds, one entry each: ``jbot sweep <kind>`` is built from this table (``cli.py`` has no per-kind
code). A new kind is a search space ``jbot/configs/sweeps/<kind>.yaml``, an objective in ``objectives.py`` and
an entry here. Importing this module loads nothing heavy: objectives are imported when a sweep starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@dataclass(frozen=True)
class SweepKind:
    name: str
    help: str
    trials: int  # the default budget of COMPLETE trials
    uses_model: bool  # takes --model (an encoder source)
    preset: Callable[[JbotConfig], str | None]  # the split whose class files must exist
    start: Callable[[Sweep, str | None, dict[str, Any], Path], tuple[Objective, Finish | None]]
    options: tuple[Option, ...] = ()
    note: str | None = None  # printed after the study summary


def _finetune(sweep: Sweep, model: str | None, options: dict[str, Any], work: Path) -> tuple[Objective, Finish]:
    from jbot.sweeps.objectives import finetune_objective, finish_finetune

    assert model is not None
    return (finetune_objective(sweep, model, work),
            lambda outcome: finish_finetune(sweep, outcome, options.get("register")))


def _anomaly(sweep: Sweep, model: str | None, options: dict[str, Any], work: Path) -> tuple[Objective, None]:
    from jbot.sweeps.objectives import anomaly_objective

    assert model is not None
    return anomaly_objective(sweep, model), None


def _pretrain(sweep: Sweep, model: str | None, options: dict[str, Any], work: Path) -> tuple[Objective, None]:
    from jbot.sweeps.objectives import pretrain_objective

    return pretrain_objective(sweep, work), None


KINDS: dict[str, SweepKind] = {kind.name: kind for kind in (
    SweepKind("finetune", "Search LLRD decay, learning rate (and dropout, batch size) on validation accuracy; test "
              "metrics of the best trial once at the end.", 30, True, lambda cfg: cfg.finetune.task, _finetune,
              (Option("fraction", float | None, "Class-balanced share of the training split", "finetune.fraction"),
               Option("register", str | None, "Register the best trial's classifier under this name"))),
    SweepKind("anomaly", "Tune anomaly-score settings on the validation split's combined AUC (labelled W, Z, t, as "
              "the paper did).", 30, True, lambda cfg: "qg", _anomaly,
              note="note: tuned on labelled W, Z, t jets of the validation split; run `jbot anomaly` with the best "
                   "settings (--set anomaly.<field>=...) for test metrics"),
    SweepKind("pretrain", "Search model size, masking, temperatures, KoLeo weight and learning rate on the "
              "validation k-NN probe accuracy (reported every pretrain.knn_every epochs, pruned by the median rule).",
              10, False, lambda cfg: None, _pretrain),
)}
