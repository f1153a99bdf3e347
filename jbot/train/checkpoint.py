"""Checkpoints: plain tensors and primitives, written atomically, loaded with ``weights_only=True`` (no pickled
code runs on load). A checkpoint carries its resolved config, so it alone rebuilds the encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from jbot.config import ConfigError, build_config
from jbot.errors import JbotError
from jbot.io import atomic_write
from jbot.model.encoder import JetEncoder
from jbot.model.heads import ClassifierHead
from jbot.model.registry import build_encoder

FORMAT = "jbot-checkpoint"
VERSION = 1


class CheckpointError(JbotError, ValueError):
    pass


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Written atomically: a crash or a full disk never leaves a half-written checkpoint (the previous one stays)."""
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **state}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None
    except Exception:  # torch raises many types for corrupt or foreign files; never retry without weights_only
        raise CheckpointError(f"{path}: not a readable jbot checkpoint (corrupt, truncated, or not a file "
                              "written by jbot)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a jbot checkpoint (no '{FORMAT}' marker)")
    return state


def _prefixed(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def encoder_from_state(state: dict[str, Any], which: str = "student") -> JetEncoder:
    """Rebuild the encoder (``student`` or ``teacher`` backbone) from a loaded checkpoint alone: the architecture its
    config names (``model.arch``; "transformer" for a checkpoint saved before the field existed)."""
    model_cfg = build_config({"model": state["config"]["model"]}, saved=True).model
    encoder = build_encoder(model_cfg)
    weights = state.get("encoder") if which == "encoder" else _prefixed(state[which], "encoder.")
    if weights is None:
        raise CheckpointError(f"checkpoint holds no '{which}' weights")
    encoder.load_state_dict(weights)
    encoder.eval()
    return encoder


def load_encoder(path: str | Path, which: str = "student") -> JetEncoder:
    """The encoder of any jbot checkpoint: pre-training (student by default), fine-tuned or imported."""
    state = load_checkpoint(path)
    key = which if which in state else "encoder"
    return encoder_from_state(state, key)


@dataclass
class LoadedModel:
    """An encoder and, for fine-tuned or imported classifier checkpoints, its classifier head."""

    encoder: JetEncoder
    classifier: ClassifierHead | None
    class_names: tuple[str, ...]
    state: dict[str, Any]
    # where it came from, as run tags (jbot.source, jbot.upstream_run, jbot.upstream_model); set by whoever
    # fetched it (tracking.models.load_from_uri), empty for a file read here
    provenance: dict[str, str] = field(default_factory=dict)


def model_from_state(state: dict[str, Any]) -> LoadedModel:
    encoder = encoder_from_state(state, "student" if "student" in state else "encoder")
    head = None
    names: tuple[str, ...] = ()
    if "classifier" in state:
        weights = state["classifier"]
        last = max(int(k.split(".")[1]) for k in weights if k.endswith(".weight"))
        n_classes = weights[f"net.{last}.weight"].shape[0]
        head = ClassifierHead(encoder.cfg.d_model, n_classes)
        head.load_state_dict(weights)
        head.eval()
        names = tuple(state.get("class_names") or (f"class{i}" for i in range(n_classes)))
    return LoadedModel(encoder, head, names, state)


def load_model(path: str | Path) -> LoadedModel:
    """The encoder (and head) of a checkpoint file; a file whose contents do not fit together is one error."""
    state = load_checkpoint(path)
    try:
        return model_from_state(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except ConfigError as exc:  # e.g. a model.arch that is not registered here
        problems = "; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip()) or str(exc)
        raise CheckpointError(f"{path}: its model config is invalid: {problems}") from None
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a complete jbot checkpoint (no {exc} entry)") from None
    except ValidationError as exc:
        raise CheckpointError(f"{path}: its model config is invalid: "
                              + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                              ) from None
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise CheckpointError(f"{path}: the weights do not fit the checkpoint's model config ({detail[:300]})"
                              ) from None
