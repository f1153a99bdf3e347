"""Search spaces as YAML files (pydantic-validated): edit ranges without touching code. jbot ships one per sweep
kind (``jbot/configs/sweeps/<kind>.yaml``, package data); ``--space`` takes a user's own file by path.

    objective: val/best_acc     # what the study optimises: a metric its kind reports (commands/sweep_kinds.py)
    direction: maximize
    params:
      finetune.llrd_decay: {type: float, low: 0.6, high: 0.8}
      finetune.lr: {type: float, low: 4.0e-5, high: 2.0e-3, log: true}
      finetune.batch_size: {type: categorical, choices: [256, 512, 1024]}

A parameter with ``when`` is sampled only if an earlier categorical parameter took one of the listed values
(a conditional space, as Optuna's define-by-run allows): ``anomaly.knn_k: {..., when: {anomaly.score: [knn]}}``.
Trials that do not sample it keep the config's value. Optuna's default importance evaluator (conditional
PED-ANOVA) weighs such a parameter within the trials that sampled it, so a score's own settings are no longer
ranked by noise from trials where they did nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jbot.config import ConfigError, JbotConfig, format_validation_error, read_yaml, with_overrides
from jbot.paths import find_yaml

_UNSET = object()


class ParamSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    when: dict[str, tuple[Any, ...]] | None = None

    @field_validator("when", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} parameter needs low <= high (got {self.low}, {self.high})")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scaled parameter needs low > 0")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices or ()))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


class SearchSpace(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: str
    direction: Literal["maximize", "minimize"] = "maximize"
    params: dict[str, ParamSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _conditions(self) -> SearchSpace:
        names = list(self.params)
        for pos, (name, spec) in enumerate(self.params.items()):
            for parent, values in (spec.when or {}).items():
                if parent not in names[:pos]:
                    raise ValueError(f"{name}: 'when' names {parent}, which must be a parameter listed above it")
                choices = self.params[parent].choices
                if self.params[parent].type != "categorical" or choices is None:
                    raise ValueError(f"{name}: 'when' needs {parent} to be categorical")
                if unknown := [v for v in values if v not in choices]:
                    raise ValueError(f"{name}: 'when' lists {unknown} for {parent}, whose choices are {list(choices)}")
        return self

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Parameters in file order; a conditional one only where its condition holds."""
        chosen: dict[str, Any] = {}
        for name, spec in self.params.items():
            if all(chosen.get(parent, _UNSET) in values for parent, values in (spec.when or {}).items()):
                chosen[name] = spec.suggest(trial, name)
        return chosen

    def check_against(self, cfg: JbotConfig) -> None:
        """Every parameter must name a config field that accepts its values (low, high, each choice)."""
        for name, spec in self.params.items():
            samples = list(spec.choices or ()) if spec.type == "categorical" else [spec.low, spec.high]
            for value in samples:
                if spec.type == "int" and value is not None:
                    value = int(value)
                try:
                    with_overrides(cfg, {name: value})
                except ConfigError as exc:
                    raise ConfigError(f"search space parameter {name} = {value!r}: {exc}") from None


def load_space(path: str | Path) -> SearchSpace:
    """A search space from a file, or the shipped one of that name (``finetune``, ``anomaly.yaml``, ...)."""
    found = find_yaml(path, "sweeps")
    tree = read_yaml(found)
    try:
        return SearchSpace.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{found}: " + format_validation_error(exc, SearchSpace)) from None
