"""The Model Registry: ``jbot register best`` (idempotent per run), aliases, listing."""

from __future__ import annotations

import contextlib
import functools
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient

from jbot.tracking.mlflow import TrackingError


@dataclass
class Registered:
    name: str
    version: str
    run_id: str
    metric: str
    value: float
    alias: str | None
    created: bool


def best_run(client: MlflowClient, experiment: str, metric: str, mode: str = "max",
             filter_string: str | None = None, parent_run_id: str | None = None) -> mlflow.entities.Run:
    """The best FINISHED run with ``metric`` and a logged jbot model."""
    if mode not in ("max", "min"):
        raise TrackingError(f"--mode must be max or min, not {mode!r}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"no experiment named {experiment!r} in the tracking store")
    clauses = ["attributes.status = 'FINISHED'"]
    if filter_string:
        clauses.append(f"({filter_string})" if " or " in filter_string.lower() else filter_string)
    if parent_run_id:
        clauses.append(f"tags.mlflow.parentRunId = '{parent_run_id}'")
    query = " and ".join(clauses)
    try:
        runs = client.search_runs([exp.experiment_id], filter_string=query,
                                  order_by=[f"metrics.`{metric}` {'DESC' if mode == 'max' else 'ASC'}"],
                                  max_results=1000)
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"invalid run filter {filter_string!r}: {exc.message}") from None
    candidates = [r for r in runs if metric in r.data.metrics and "jbot.model_uri" in r.data.tags]
    if not candidates:
        raise TrackingError(
            f"no run matches: experiment {experiment!r}, FINISHED, with metric {metric!r} and a logged model"
            + (f", filter {filter_string!r}" if filter_string else "")
            + (f", parent run {parent_run_id}" if parent_run_id else "")
            + f" ({len(runs)} finished runs searched)"
        )
    return candidates[0]


def register_best(client: MlflowClient, experiment: str, metric: str, name: str, mode: str = "max",
                  alias: str | None = "champion", filter_string: str | None = None,
                  parent_run_id: str | None = None) -> Registered:
    """Register the best run's model under ``name`` (reusing the version if that run is registered already),
    tag the version with the metric, run and sweep, and point ``alias`` at it."""
    run = best_run(client, experiment, metric, mode, filter_string, parent_run_id)
    run_id = run.info.run_id
    value = run.data.metrics[metric]
    existing: list[mlflow.entities.model_registry.ModelVersion] = []
    if client.search_registered_models(filter_string=f"name = '{name}'"):
        existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version, created = str(min(int(v.version) for v in existing)), False
    else:
        register_model(run.data.tags["jbot.model_uri"], name)
        version, created = _deduplicate(client, name, run_id), True
    card, card_tags = model_card(client, run, Selection(experiment, metric, mode, filter_string, parent_run_id),
                                 f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}")
    tags = {"jbot.metric": metric, "jbot.metric_value": repr(value), "jbot.run_id": run_id,
            "jbot.experiment": experiment,
            "jbot.sweep": run.data.tags.get("mlflow.parentRunId", ""), **card_tags}
    for key, val in tags.items():
        _retry(functools.partial(client.set_model_version_tag, name, version, key, val))
    if not client.get_registered_model(name).description:
        _retry(lambda: client.update_registered_model(
            name, description="jBOT encoders and classifiers registered by `jbot register best`; each version's "
                              "description is its model card (input, output, training data, how it was chosen)"))
    _retry(lambda: client.update_model_version(name, version, description=card))
    if alias:
        _retry(lambda: client.set_registered_model_alias(name, alias, version))
    return Registered(name, version, run_id, metric, value, alias, created)


@dataclass(frozen=True)
class Selection:
    """How ``register best`` chose a run: the experiment, metric and direction, the filter and parent run."""

    experiment: str
    metric: str
    mode: str
    filter_string: str | None = None
    parent_run_id: str | None = None

    def text(self, value: float) -> str:
        where = [f"experiment {self.experiment}"]
        if self.filter_string:
            where.append(f"runs matching `` {self.filter_string} ``")
        if self.parent_run_id:
            where.append(f"children of run {self.parent_run_id}")
        return f"the {'highest' if self.mode == 'max' else 'lowest'} {self.metric} ({value:.4g}) of {', '.join(where)}"


def model_card(client: MlflowClient, run: mlflow.entities.Run, how: Selection,
               uri: str = "models:/NAME@ALIAS") -> tuple[str, dict[str, str]]:
    """A registered version's card (Markdown, its description in the registry) and the tags that carry the same
    facts: what goes in and comes out, the data it was trained on, how it was chosen, the reproduction's verdicts
    when it came from one, and a link to its run."""
    from jbot.redaction import redact
    from jbot.tracking.mlflow import run_link, ui_base

    tags, params = run.data.tags, run.data.params
    meta: dict[str, str] = {}
    try:
        meta = dict(mlflow.models.get_model_info(tags["jbot.model_uri"]).metadata or {})
    except (mlflow.exceptions.MlflowException, OSError):
        pass  # a model logged before its metadata named the input: the run's tags say it
    columns = tags.get("jbot.features", "")
    n_particles = meta.get("jbot.n_particles", params.get("model.n_particles", "?"))
    given = meta.get("jbot.input", f"float jets (N, {n_particles}, {len(columns.split(','))}): {columns}")
    out = meta.get("jbot.output", "float32 (N, D): the [CLS] embedding")
    data = params.get("data.dir", "?")
    fingerprint = tags.get("jbot.data_fingerprint", "?")
    preset = tags.get("jbot.preset", params.get("data.preset", "?"))
    value = run.data.metrics[how.metric]
    lines = [
        f"**{run.info.run_name}**, from `jbot {tags.get('jbot.command', '?')}`",
        "",
        f"- **Input**: {given} (pT-ordered particles; padding rows have valid = 0)",
        f"- **Output**: {out}",
        f"- **Trained on**: `{data}` (split preset {preset}, data fingerprint `{fingerprint[:16]}`)",
        f"- **Encoder**: d_model {params.get('model.d_model', '?')}, {params.get('model.n_layers', '?')} layers, "
        f"{params.get('pretrain.epochs', '?')} pre-training epochs",
        f"- **Chosen as**: {how.text(value)}",
    ]
    verdicts: dict[str, str] = {}
    parent_id = tags.get("mlflow.parentRunId")
    if parent_id:
        parent = client.get_run(parent_id)
        if parent.data.tags.get("jbot.role") == "reproduce-parent":
            verdicts = {k.removeprefix("claim."): v for k, v in sorted(parent.data.tags.items())
                        if k.startswith("claim.")}
            lines.append(f"- **From** `jbot reproduce` ({parent.info.run_name}, run {parent_id}): "
                         + ("; ".join(f"{k}: {v}" for k, v in verdicts.items()) or "no verdicts yet"))
    link = run_link(ui_base(str(client.tracking_uri)), run.info.experiment_id, run.info.run_id)
    lines += [f"- **Run**: [{run.info.run_id}]({link}); jbot {tags.get('jbot.version', '?')}, commit "
              f"{tags.get('jbot.git_commit', 'unknown')[:12]}",
              "",
              f"Load it: `jbot.load_encoder(\"{uri}\")`, or `mlflow.pyfunc.load_model(\"{uri}\").predict(jets)` "
              "in any environment with torch and mlflow (jbot travels inside the model)."]
    card_tags = {"jbot.input": given, "jbot.output": out, "jbot.data": redact(data),
                 "jbot.data_fingerprint": fingerprint,
                 "jbot.preset": preset, "jbot.selected_by": how.text(value),
                 **({"jbot.verdicts": "; ".join(f"{k}: {v}" for k, v in verdicts.items())} if verdicts else {})}
    return redact("\n".join(lines)), card_tags


def register_model(model_uri: str, name: str) -> str:
    """``mlflow.register_model`` in the current store, without the lines it prints (jbot says what it did)."""
    with contextlib.redirect_stderr(io.StringIO()):
        return str(mlflow.register_model(model_uri, name).version)


def _retry(call: Callable[[], object], attempts: int = 4) -> None:
    """Concurrent writers (sweep workers finishing together) can collide on a store's insert-or-update."""
    for attempt in range(attempts):
        try:
            call()
            return
        except mlflow.exceptions.MlflowException:
            if attempt + 1 == attempts:
                raise
            time.sleep(0.2 * (attempt + 1))


def _deduplicate(client: MlflowClient, name: str, run_id: str) -> str:
    """Keep the oldest version of ``run_id``: two sweep workers finishing together may both have registered it."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    versions = sorted({int(v.version) for v in found})  # a set: a store may list one version twice
    for extra in versions[1:]:
        try:
            client.delete_model_version(name, str(extra))
        except mlflow.exceptions.MlflowException:
            pass  # the other worker deleted it first
    return str(versions[0])


def list_versions(client: MlflowClient, name: str) -> list[dict[str, str]]:
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        raise TrackingError(f"no registered model named {name!r}")
    model = client.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version)):
        rows.append({"version": str(mv.version), "aliases": ", ".join(aliases.get(str(mv.version), [])),
                     "run_id": mv.run_id or "", "metric": mv.tags.get("jbot.metric", ""),
                     "value": mv.tags.get("jbot.metric_value", "")})
    return rows
