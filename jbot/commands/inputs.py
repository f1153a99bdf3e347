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


def require_data(cfg: JbotConfig, preset: str | None = None, anomaly: bool = False) -> None:
    """Fail on a missing data folder or class file, or a preset that cannot be used (``anomaly``: one with no
    background classes), before torch and MLflow are loaded."""
    if cfg.data.stream:
        from jbot.data.shards import find_shards

        find_shards(cfg.data.dir, cfg.model.features)
        if cfg.data.val_dir is not None:
            find_shards(cfg.data.val_dir, cfg.model.features)
        return
    from jbot.data.jetnet import DataError, check_data_dir, check_data_folder
    from jbot.data.presets import JETNET, PresetError, for_anomaly, get_preset
    from jbot.data.readers import class_sources
    from jbot.data.splits import present

    try:
        chosen = present(get_preset(preset or cfg.data.preset), cfg.data.dir, anomaly)
        if anomaly:
            for_anomaly(chosen)
    except PresetError as exc:
        raise DataError(str(exc)) from None
    if all(c in JETNET for c in chosen.classes):
        check_data_dir(cfg.data.dir, chosen.classes)
        return
    folder = check_data_folder(cfg.data.dir)
    missing = [c for c in chosen.classes if not class_sources(folder, c)]
    if missing:
        raise DataError(f"{folder}: no files for class '{missing[0]}' of preset {chosen.name} "
                        f"({missing[0]}_<nnn>.root, .parquet or .hdf5)")


def require_model(source: str) -> None:
    if not is_model_source(source):
        raise ConfigError(f"--model {source}: no such checkpoint file, run id or runs:/ / models:/ URI")
