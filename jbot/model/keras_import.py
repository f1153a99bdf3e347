"""The authors' published Keras 3 ``.weights.h5`` files (docs/method.md §9) read with h5py, no TensorFlow.

Weights are mapped by dataset path and position, never by the ``name`` attributes (they depend on Keras's
global counters). Keras kernels are (in, out): the PyTorch weight is the transpose. The published computation
is post-LN, k_d = floor(D / H), attention over padded slots (``mask_padding=False``) and raw input features
(``feature_scale`` = 1).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from jbot.config import ModelConfig
from jbot.data.classes import BACKGROUND, CLASS_LABELS, LABELS
from jbot.data.presets import PRESETS
from jbot.errors import JbotError
from jbot.io import file_hash

NAME = re.compile(r"^(all|tqg|qg)_(backbone|mlp)_(pretrain|ft|standalone)_(\d+)_(\d+)_(\d+)\.weights\.h5$")
# class labels of the authors' classifiers, by the data prefix of their file names
KERAS_LABELS = {"all": LABELS, "tqg": PRESETS["tqg"].labels, "qg": tuple(CLASS_LABELS[c] for c in BACKGROUND)}


class KerasImportError(JbotError, ValueError):
    """A file that is not a usable Keras weights file; the message names the file and the dataset."""


class _Weights:
    """Datasets of one file, read by path with shape checks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise KerasImportError(f"{path}: file not found")
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise KerasImportError(f"{path}: not a Keras weights file (not readable as HDF5: {exc})") from None
        if "layers" not in self.file:
            raise KerasImportError(f"{path}: not a Keras weights file (no 'layers' group)")

    def has(self, key: str) -> bool:
        return key in self.file

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if key not in self.file:
            raise KerasImportError(f"{self.path}: missing dataset '{key}' (not the published layout?)")
        try:
            value = np.asarray(self.file[key][()], dtype=np.float32)
        except (OSError, TypeError, AttributeError) as exc:
            raise KerasImportError(f"{self.path}: dataset '{key}' cannot be read (truncated file?): {exc}") from None
        if shape is not None and value.shape != shape:
            raise KerasImportError(f"{self.path}: dataset '{key}' has shape {value.shape}, expected {shape}")
        return value

    def close(self) -> None:
        self.file.close()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _block_key(i: int) -> str:
    return "layers/transformer_block" if i == 0 else f"layers/transformer_block_{i}"


def _check_name(path: Path, kind: str, d: int, h: int, n_layers: int) -> None:
    match = NAME.match(path.name)
    if match is None:
        return
    if match.group(2) != kind:
        raise KerasImportError(f"{path}: the file name says '{match.group(2)}', expected a {kind} file")
    named = tuple(int(g) for g in match.groups()[3:])
    if named != (d, h, n_layers):
        raise KerasImportError(f"{path}: the file name says D, H, L = {named}, the weights hold {(d, h, n_layers)}")


def read_backbone(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """-> (architecture inferred from the shapes, ``JetEncoder`` state dict without [MASK])."""
    path = Path(path)
    w = _Weights(path)
    try:
        kernel = w.get("layers/dense/vars/0")
        if kernel.ndim != 2:
            raise KerasImportError(f"{path}: 'layers/dense/vars/0' has shape {kernel.shape}, expected (F, D)")
        n_features, d = kernel.shape
        n_layers = 0
        while w.has(_block_key(n_layers)):
            n_layers += 1
        q = w.get(f"{_block_key(0)}/mha/query_dense/vars/0") if n_layers else np.zeros((d, 1, d))
        if q.ndim != 3 or q.shape[0] != d:
            raise KerasImportError(f"{path}: query kernel has shape {q.shape}, expected (D, H, k_d) with D = {d}")
        _, h, kd = q.shape
        if kd != d // h:
            raise KerasImportError(f"{path}: head dim {kd} != floor(D / H) = {d // h}")
        _check_name(path, "backbone", d, h, n_layers)
        state = {
            "embed.weight": _t(kernel.T),
            "embed.bias": _t(w.get("layers/dense/vars/1", (d,))),
            "cls_token": _t(w.get("layers/add_cls_token/vars/0", (1, 1, d))),
        }
        for i in range(n_layers):
            b, out = _block_key(i), f"blocks.{i}"
            for keras_name, ours in (("query", "query"), ("key", "key"), ("value", "value")):
                k = w.get(f"{b}/mha/{keras_name}_dense/vars/0", (d, h, kd))
                state[f"{out}.attn.{ours}.weight"] = _t(k.reshape(d, h * kd).T)
                state[f"{out}.attn.{ours}.bias"] = _t(w.get(f"{b}/mha/{keras_name}_dense/vars/1", (h, kd)).reshape(-1))
            o = w.get(f"{b}/mha/output_dense/vars/0", (h, kd, d))
            state[f"{out}.attn.out.weight"] = _t(o.reshape(h * kd, d).T)
            state[f"{out}.attn.out.bias"] = _t(w.get(f"{b}/mha/output_dense/vars/1", (d,)))
            for ln in ("ln1", "ln2"):
                state[f"{out}.{ln}.weight"] = _t(w.get(f"{b}/{ln}/vars/0", (d,)))
                state[f"{out}.{ln}.bias"] = _t(w.get(f"{b}/{ln}/vars/1", (d,)))
            for j, (name, shape) in enumerate((("dense", (d, 4 * d)), ("dense_1", (4 * d, d)))):
                state[f"{out}.ffn.{2 * j}.weight"] = _t(w.get(f"{b}/ffn/layers/{name}/vars/0", shape).T)
                state[f"{out}.ffn.{2 * j}.bias"] = _t(w.get(f"{b}/ffn/layers/{name}/vars/1", (shape[1],)))
    finally:
        w.close()
    cfg = ModelConfig(arch="transformer", d_model=d, n_heads=h, n_layers=n_layers, d_proj=max(1, d // 2),
                      n_features=n_features, mask_padding=False, feature_scale=(1.0, 1.0, 1.0, 1.0))
    return cfg, state


def read_classifier(path: str | Path, d_model: int) -> tuple[int, dict[str, torch.Tensor]]:
    """-> (number of classes, ``ClassifierHead`` state dict). Layers ``dense``, ``dense_1``, ``dense_2``."""
    path = Path(path)
    w = _Weights(path)
    try:
        k2 = w.get("layers/dense_2/vars/0")
        if k2.ndim != 2 or k2.shape[0] != d_model:
            raise KerasImportError(f"{path}: 'layers/dense_2/vars/0' has shape {k2.shape}, expected ({d_model}, C)")
        n_classes = k2.shape[1]
        shapes = [(d_model, 2 * d_model), (2 * d_model, d_model), (d_model, n_classes)]
        state = {}
        for j, (name, shape) in enumerate(zip(("dense", "dense_1", "dense_2"), shapes, strict=True)):
            state[f"net.{3 * j}.weight"] = _t(w.get(f"layers/{name}/vars/0", shape).T)
            state[f"net.{3 * j}.bias"] = _t(w.get(f"layers/{name}/vars/1", (shape[1],)))
    finally:
        w.close()
    return n_classes, state


def class_names_for(path: Path, n_classes: int) -> tuple[str, ...]:
    match = NAME.match(path.name)
    names = KERAS_LABELS.get(match.group(1), ()) if match else ()
    return names if len(names) == n_classes else tuple(f"class{i}" for i in range(n_classes))


@contextlib.contextmanager
def _corrupt_is_an_error(path: str | Path) -> Iterator[None]:
    """h5py meets damaged bytes anywhere in a file (KeyError "bad object header", OSError, ...): one error."""
    try:
        yield
    except KerasImportError:
        raise
    except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise KerasImportError(f"{path}: corrupt Keras weights file ({detail})") from None


def import_keras(backbone: str | Path, classifier: str | Path | None = None) -> dict[str, Any]:
    """A jbot checkpoint (dict) holding the published encoder and, optionally, its classifier head."""
    from jbot.config import JbotConfig
    from jbot.model.registry import build_encoder

    with _corrupt_is_an_error(backbone):
        model_cfg, enc_state = read_backbone(backbone)
    encoder = build_encoder(model_cfg)
    missing = set(encoder.state_dict()) - set(enc_state)
    if missing - {"mask_token"}:
        raise KerasImportError(f"{backbone}: weights missing for {sorted(missing)}")
    enc_state["mask_token"] = encoder.state_dict()["mask_token"]  # not published: keep the fresh init
    encoder.load_state_dict(enc_state)
    cfg = JbotConfig(model=model_cfg)
    state: dict[str, Any] = {
        "kind": "encoder",
        "config": cfg.model_dump(mode="json"),
        "encoder": encoder.state_dict(),
        "source": {"backbone": str(backbone), "backbone_sha256": file_hash(backbone)},
    }
    if classifier is not None:
        with _corrupt_is_an_error(classifier):
            n_classes, head_state = read_classifier(classifier, model_cfg.d_model)
        state.update(kind="classifier", classifier=head_state,
                     class_names=list(class_names_for(Path(classifier), n_classes)))
        state["source"].update(classifier=str(classifier), classifier_sha256=file_hash(classifier))
    return state
