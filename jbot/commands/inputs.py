"""A command's inputs, checked before torch and MLflow load: the config with its store resolved once, the data
folder and the model source."""

from __future__ import annotations

from pathlib import Path

from jbot.config import ConfigError, JbotConfig, load_config, with_overrides
from jbot.paths import is_model_source, resolve_tracking_uri


def resolve(config: Path | None, overrides: list[str] | None, tracking_uri: str | None = None) -> JbotConfig:
    """The command's config, with ``tracking.uri`` resolved once (flag > config > env > embedded): every layer
    below reads ``cfg.tracking.uri`` and never resolves it again."""
    return with_store(load_config(config, overrides or []), tracking_uri)


def with_store(cfg: JbotConfig, tracking_uri: str | None) -> JbotConfig:
    return with_overrides(cfg, {"tracking.uri": resolve_tracking_uri(tracking_uri, cfg.tracking.uri)})


def require_data(cfg: JbotConfig, preset: str | None = None) -> None:
    """Fail on a missing data folder or class file before torch and MLflow are loaded."""
    if cfg.data.stream:
        from jbot.data.shards import find_shards

        find_shards(cfg.data.dir, cfg.model.n_particles)
        if cfg.data.val_dir is not None:
            find_shards(cfg.data.val_dir, cfg.model.n_particles)
        return
    from jbot.data.classes import PRESET_CLASSES
    from jbot.data.jetnet import check_data_dir

    check_data_dir(cfg.data.dir, PRESET_CLASSES.get(preset or cfg.data.preset, ()))


def require_model(source: str) -> None:
    if not is_model_source(source):
        raise ConfigError(f"--model {source}: no such checkpoint file, run id or runs:/ / models:/ URI")
