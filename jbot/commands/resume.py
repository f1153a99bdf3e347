"""Where ``jbot pretrain`` starts: the config, and with ``--resume`` the checkpoint, read once into a ``Resume``
that every later check and the trainer use. Torch-free until a checkpoint is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jbot.commands.inputs import resolve, with_store
from jbot.config import RESUMABLE, ConfigError, JbotConfig, flatten, resume_config


@dataclass(frozen=True)
class Resume:
    """A checkpoint to continue from, read once: every check and the trainer use this ``state``."""

    path: Path
    state: dict[str, Any]

    @property
    def epochs_done(self) -> int:
        return int(self.state.get("epoch", 0))

    @property
    def run_id(self) -> str | None:
        """The MLflow run that wrote it (continued when it is in this store)."""
        return (self.state.get("meta") or {}).get("mlflow_run_id")


@dataclass(frozen=True)
class Start:
    """What ``jbot pretrain`` does: train ``cfg`` (from ``resume`` if set), or nothing (``done`` says why)."""

    cfg: JbotConfig
    resume: Resume | None = None
    done: str | None = None


def prepare(config: Path | None, overrides: list[str], tracking_uri: str | None, resume: str | None) -> Start:
    """The config to pre-train with and the checkpoint to continue from. ``resume="auto"``: ``<out>/checkpoint.pt``
    when it exists (trained with the settings --config and --set give), else a fresh start; ``done`` is set when
    that checkpoint has trained every epoch."""
    if resume is None:
        return Start(resolve(config, overrides, tracking_uri))
    fresh = None
    if resume == "auto":
        fresh = resolve(config, overrides, tracking_uri)
        path = Path(fresh.pretrain.out_dir) / "checkpoint.pt"
        if not path.is_file():
            return Start(fresh)
    else:
        if config is not None:
            raise ConfigError("--resume continues with the checkpoint's own config: change fields with --set, "
                              "--out, --data or --device, not --config (or use --resume auto)")
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"--resume {resume}: checkpoint not found")
    from jbot.train.checkpoint import load_checkpoint

    found = Resume(path, load_checkpoint(path))
    cfg = with_store(resume_config(found.state["config"], overrides), tracking_uri)
    if fresh is not None:
        before, after = flatten(fresh), flatten(cfg)
        differ = sorted(k for k in before if before[k] != after.get(k) and not k.startswith(RESUMABLE))
        if differ:
            raise ConfigError(f"--resume auto: {path} was trained with other settings than these: " + ", ".join(
                f"{k} ({after.get(k)!r} there, {before[k]!r} here)" for k in differ[:5])
                + "; use another --out, or --resume PATH to continue with the checkpoint's own settings")
        if found.epochs_done >= cfg.pretrain.epochs and not int(found.state.get("step", 0)):
            return Start(cfg, found, done=f"{path} has trained all {found.epochs_done} epochs: nothing to do")
    check_more_epochs(cfg, found)
    return Start(cfg, found)


def check_more_epochs(cfg: JbotConfig, resume: Resume) -> None:
    done = resume.epochs_done
    if cfg.pretrain.epochs <= done:
        raise ConfigError(f"{resume.path} has already trained {done} epochs (pretrain.epochs = "
                          f"{cfg.pretrain.epochs}); to train on, pass --set pretrain.epochs=N with N > {done}")


def check_same_data(cfg: JbotConfig, fingerprint: str, resume: Resume, allow_other_data: bool) -> None:
    """Refuse a resume on other data than the checkpoint's (unless ``allow_other_data``)."""
    from jbot.data.jetnet import DataError

    saved = resume.state.get("data_fingerprint")
    if saved and saved != fingerprint and not allow_other_data:
        raise DataError(f"{resume.path} was trained on data with fingerprint {saved[:16]}, but {cfg.data.dir} "
                        f"({cfg.data.preset}) has {fingerprint[:16]}: other files or another split. Resume on "
                        "the same data, or pass --allow-other-data to continue on these jets")


def resume_command(checkpoint: Path) -> str:
    """The command that continues a stopped pre-training from its checkpoint."""
    return f"jbot pretrain --resume {checkpoint}"


def resume_tag(checkpoint: Path) -> str:
    """The resume command for the run's tag: with the checkpoint's absolute path (it works from any folder)."""
    return resume_command(checkpoint.absolute())
