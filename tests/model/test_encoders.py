"""Encoders by name: ``model.arch``, the registry ``jbot.model.registry.ENCODERS`` and ``build_encoder``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import ConfigError, JbotConfig, ModelConfig, flatten, load_config, resume_config
from jbot.model import registry
from jbot.model.encoder import JetEncoder
from jbot.model.registry import DEFAULT_ARCH, ENCODERS, arch_names, build_encoder
from jbot.ssl.method import JBOTNetwork
from jbot.train.checkpoint import CheckpointError, load_encoder, load_model, save_checkpoint
from jbot.train.finetune import JetClassifier, llrd_param_groups
from tests.conftest import TINY, jet_batch, one_error_line, tiny_checkpoint

runner = CliRunner()
SMALL = ModelConfig(d_model=16, n_heads=2, n_layers=2, d_proj=8)


class ToyEncoder(nn.Module):
    """A second architecture for the tests: per-particle MLP layers and a mean over the valid particles."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Linear(cfg.n_features, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(0.0))
                                    for _ in range(cfg.n_layers))

    def set_dropout(self, p: float) -> None:
        for module in self.blocks.modules():
            if isinstance(module, nn.Dropout):
                module.p = p

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        if masked is not None:
            h = torch.where(masked[..., None], self.mask_token.to(h.dtype), h)
        for block in self.blocks:
            h = h + block(h)
        valid = x[..., -1:].clamp(0, 1)
        return (h * valid).sum(1) / valid.sum(1).clamp_min(1), h

    def backbone_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if n != "mask_token")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> ModelConfig:
    """``toy`` registered (as a lazily imported "module:attribute" entry) for one test; its model config."""
    monkeypatch.setitem(ENCODERS, "toy", f"{__name__}:ToyEncoder")
    return ModelConfig.model_validate({**SMALL.model_dump(), "arch": "toy"})


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def _dropouts(module: nn.Module) -> list[float]:
    return [m.p for m in module.modules() if isinstance(m, nn.Dropout)]


# ------------------------------------------------------------------------------------------------ the names


def test_the_configs_choices_are_the_registrys_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    assert arch_names() == list(ENCODERS) and DEFAULT_ARCH in ENCODERS
    assert ModelConfig().arch == DEFAULT_ARCH == "transformer" == load_config().model.arch
    for name in ENCODERS:
        assert ModelConfig(arch=name).arch == name
    with pytest.raises(ValidationError) as info:
        ModelConfig(arch="nope")
    (error,) = info.value.errors()
    assert error["loc"] == ("arch",)
    assert error["msg"].split("; choose from ")[1].split(", ") == list(ENCODERS)
    # the config reads the registry itself: a name added there is a valid choice at once
    monkeypatch.setitem(ENCODERS, "another", f"{__name__}:ToyEncoder")
    assert ModelConfig(arch="another").arch == "another"


def test_an_unknown_arch_is_one_config_error_line_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"model\.arch: unknown architecture 'nope'; choose from transformer"):
        load_config(None, ["model.arch=nope"])
    result = runner.invoke(app, ["config", "show", "--set", "model.arch=nope"])
    line = one_error_line(result.output)
    assert result.exit_code == 2, result.output
    assert "model.arch: unknown architecture 'nope'; choose from " + ", ".join(ENCODERS) in line
    shown = runner.invoke(app, ["config", "show"])
    assert shown.exit_code == 0 and "arch: transformer" in shown.output


def test_the_config_and_the_registry_load_no_torch() -> None:
    code = ("import sys, jbot.config, jbot.model.registry; jbot.config.load_config(None, ['model.arch=transformer']);"
            " assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_arch_is_an_mlflow_param() -> None:
    assert flatten(JbotConfig())["model.arch"] == "transformer"


# ------------------------------------------------------------------------------------------------- building


def test_build_encoder_on_the_default_is_the_particle_transformer() -> None:
    torch.manual_seed(3)
    direct = JetEncoder(SMALL).eval()
    torch.manual_seed(3)
    built = build_encoder(SMALL).eval()
    assert type(built) is JetEncoder and built.cfg == SMALL
    _same_state(direct, built)
    x = jet_batch(8)
    with torch.no_grad():
        for a, b in zip(direct(x), built(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(3)
    with_dropout = build_encoder(SMALL, dropout=0.25)
    assert _dropouts(with_dropout) == _dropouts(JetEncoder(SMALL, 0.25)) == [0.25] * 2
    _same_state(direct, with_dropout)


def test_the_pretraining_network_builds_through_the_registry(toy: ModelConfig) -> None:
    assert type(JBOTNetwork(SMALL).encoder) is JetEncoder
    network = JBOTNetwork(toy, dropout=0.1)
    assert type(network.encoder) is ToyEncoder
    assert set(_dropouts(network.encoder)) == {0.1}
    cls, z_cls, z_part = network(jet_batch(4))
    assert cls.shape == (4, 16) and z_cls.shape == (4, 8) and z_part.shape == (4, 30, 8)


def test_a_second_architecture_is_built_by_name(toy: ModelConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = build_encoder(toy)
    assert type(encoder) is ToyEncoder and encoder.cfg.arch == "toy"
    cls, tokens = encoder(jet_batch(4), torch.zeros(4, 30, dtype=torch.bool))
    assert cls.shape == (4, 16) and tokens.shape == (4, 30, 16)
    # fine-tuning's layer-wise decay reads the interface alone: every parameter in exactly one group
    model = JetClassifier(encoder, n_classes=5)
    groups = llrd_param_groups(model, 1e-3, 0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    # a factory given directly (not as "module:attribute") works the same
    monkeypatch.setitem(ENCODERS, "toy", ToyEncoder)
    assert type(build_encoder(toy)) is ToyEncoder


def test_an_encoder_without_the_interface_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ENCODERS, "bare", lambda cfg: nn.Linear(cfg.n_features, cfg.d_model))
    with pytest.raises(TypeError, match=r"'bare' lacks cfg, blocks, set_dropout, backbone_parameters"):
        build_encoder(ModelConfig(arch="bare"))
    with pytest.raises(KeyError, match="unknown architecture"):
        registry.encoder_factory("missing")


# ----------------------------------------------------------------------------------------------- checkpoints


def _encoder_checkpoint(path: Path, model: dict[str, Any], weights: dict[str, torch.Tensor]) -> Path:
    config = {**JbotConfig().model_dump(mode="json"), "model": model}
    return save_checkpoint(path, {"kind": "encoder", "config": config, "encoder": weights})


def test_a_checkpoint_naming_the_second_architecture_loads_it(toy: ModelConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = build_encoder(toy).eval()
    path = _encoder_checkpoint(tmp_path / "toy.pt", toy.model_dump(mode="json"), saved.state_dict())
    loaded = load_model(path)
    assert type(loaded.encoder) is ToyEncoder and loaded.encoder.cfg == toy
    _same_state(saved, loaded.encoder)
    x = jet_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(x)[0], saved(x)[0], rtol=0, atol=0)
    assert type(load_encoder(path)) is ToyEncoder
    # a pre-training checkpoint (student and teacher networks) of it
    net = JBOTNetwork(toy)
    state = {"kind": "pretrain", "config": {"model": toy.model_dump(mode="json")},
             "student": net.state_dict(), "teacher": net.state_dict()}
    assert type(load_encoder(save_checkpoint(tmp_path / "pre.pt", state), "teacher")) is ToyEncoder


def test_a_checkpoint_naming_an_unregistered_architecture_is_one_error(toy: ModelConfig, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = _encoder_checkpoint(tmp_path / "toy.pt", toy.model_dump(mode="json"), build_encoder(toy).state_dict())
    monkeypatch.delitem(ENCODERS, "toy")
    with pytest.raises(CheckpointError, match=r"its model config is invalid: model\.arch: unknown architecture "
                                              r"'toy'; choose from transformer"):
        load_model(path)


def test_an_old_checkpoint_without_arch_loads_as_the_transformer(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "new.pt", seed=1)
    state = torch.load(path, weights_only=True)
    assert state["config"]["model"]["arch"] == "transformer"  # every checkpoint names its architecture
    del state["config"]["model"]["arch"]
    old = save_checkpoint(tmp_path / "old.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    loaded = load_model(old)
    assert type(loaded.encoder) is JetEncoder and loaded.encoder.cfg.arch == "transformer"
    _same_state(load_model(path).encoder, loaded.encoder)
    # and a resumed pre-training reads its config the same way; the architecture stays as trained
    saved_cfg = state["config"]
    assert resume_config(saved_cfg, ["pretrain.epochs=3"]).model.arch == "transformer"


def test_a_resumed_run_keeps_its_architecture(toy: ModelConfig) -> None:
    saved = load_config(None, TINY).model_dump(mode="json")
    del saved["model"]["arch"]
    with pytest.raises(ConfigError, match=r"model\.arch \('transformer', asked 'toy'\)"):
        resume_config(saved, ["model.arch=toy"])


def test_an_old_checkpoint_without_a_schema_loads_as_the_papers(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "new.pt", seed=2)
    state = torch.load(path, weights_only=True)
    assert state["config"]["model"]["features"] == ["eta_rel", "phi_rel", "pt_rel"]  # every checkpoint records it
    del state["config"]["model"]["features"]
    old = save_checkpoint(tmp_path / "old.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    loaded = load_model(old)
    assert loaded.encoder.cfg.features == ("eta_rel", "phi_rel", "pt_rel") and loaded.encoder.cfg.n_features == 4
    _same_state(load_model(path).encoder, loaded.encoder)


def test_a_declared_schema_widens_the_embedding_and_round_trips(tmp_path: Path) -> None:
    features = ["eta_rel", "phi_rel", "pt_rel", "charge", "is_photon", "log_pt"]
    cfg = load_config(None, [*TINY, f"model.features=[{','.join(features)}]"]).model
    encoder = build_encoder(cfg)
    assert encoder.embed.in_features == 7 and encoder.feature_scale.tolist() == [10, 10, 10, 1, 1, 1, 1]
    path = _encoder_checkpoint(tmp_path / "wide.pt", cfg.model_dump(mode="json"), encoder.state_dict())
    assert load_model(path).encoder.cfg.features == tuple(features)
