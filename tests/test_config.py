from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import ConfigError, JbotConfig, build_config, flatten, load_config, resume_config, with_overrides

runner = CliRunner()


def test_published_sizes_table1() -> None:
    s = load_config("jbot-s.yaml")
    b = load_config("jbot-b")
    assert (s.model.d_model, s.model.n_layers, s.model.n_heads, s.model.d_proj) == (32, 2, 4, 16)
    assert (b.model.d_model, b.model.n_layers, b.model.n_heads, b.model.d_proj) == (64, 4, 6, 32)
    for cfg in (s, b):
        assert cfg.pretrain.batch_size == 1024
        assert cfg.pretrain.base_lr * cfg.pretrain.batch_size / 256 == pytest.approx(2e-3)
        assert (cfg.pretrain.teacher_temp, cfg.pretrain.student_temp) == (0.04, 0.1)
        assert cfg.pretrain.koleo_weight == 0.01
        assert cfg.pretrain.dropout == 0.0 and cfg.finetune.dropout == 0.2
        assert (cfg.mask.ratio_min, cfg.mask.ratio_max) == (0.0, 0.5)
    # jbot-b.yaml lists only what differs from jBOT-S, whose file equals the built-in defaults
    assert s == JbotConfig()
    differs = {k for k, v in flatten(b).items() if flatten(s)[k] != v}
    assert differs == {"model.d_model", "model.n_layers", "model.n_heads", "model.d_proj"}


def test_cpu_recipe_changes_only_the_optimisation() -> None:
    """jbot-s-cpu.yaml: the sweep-found recipe for small compute, the paper's model and everything else."""
    s, cpu = flatten(load_config("jbot-s")), flatten(load_config("jbot-s-cpu"))
    assert {k for k, v in cpu.items() if s[k] != v} == {"pretrain.base_lr", "pretrain.teacher_temp",
                                                         "pretrain.student_temp", "pretrain.koleo_weight"}
    assert cpu["pretrain.base_lr"] == 4e-3


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["model.d_model=64", "pretrain.lr_schedule=cosine", "data.n_train=100"])
    assert cfg.model.d_model == 64 and cfg.pretrain.lr_schedule == "cosine" and cfg.data.n_train == 100
    with pytest.raises(ConfigError, match=r"model\.d_model.*expected int.*'abc'"):
        load_config(None, ["model.d_model=abc"])
    # YAML reads on/off as booleans; the compile switch takes them back
    assert load_config(None, ["runtime.compile=off"]).runtime.compile == "off"
    assert load_config(None, ["runtime.compile=on"]).runtime.compile == "on"


def test_moved_fields_named_and_saved_configs_upgraded() -> None:
    """A user's old field name is an error naming its new place; a config saved by an older jbot is read with its
    values moved, and removed fields dropped."""
    with pytest.raises(ConfigError, match=r"pretrain\.device: now runtime\.device"):
        load_config(None, ["pretrain.device=cpu"])
    with pytest.raises(ConfigError, match=r"model\.jet_conditioning: no longer exists"):
        load_config(None, ["model.jet_conditioning=false"])
    old = JbotConfig().model_dump(mode="json")
    del old["runtime"], old["evaluate"]
    old["pretrain"].update(device="cpu", precision="fp32", compile="off")
    old["probe"]["n_folds"], old["anomaly"]["n_folds"] = 4, 4
    old["model"].update(jet_conditioning=False, n_jet_features=4)
    old["tracking"]["registry_name"], old["sweep"]["n_trials"] = "jbot-encoder", 30
    cfg = build_config(old, saved=True)
    assert (cfg.runtime.device, cfg.runtime.precision, cfg.runtime.compile) == ("cpu", "fp32", "off")
    assert cfg.evaluate.n_folds == 4
    assert resume_config(old, ["runtime.device=auto"]).runtime.device == "auto"


def test_unknown_keys_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.dmodel: unknown field"):
        load_config(None, ["model.dmodel=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle:\n  d_model: 3\n")
    with pytest.raises(ConfigError, match="modle: unknown field"):
        load_config(bad)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["model.d_model=2", "model.n_heads=4"], r"d_model \(2\) must be >= n_heads \(4\)"),
        (["mask.ratio_min=0.6", "mask.ratio_max=0.5"], r"ratio_min \(0.6\) must be <= ratio_max"),
        (["mask.ratio_max=1.5"], r"mask.ratio_max: Input should be less than or equal to 1"),
        (["finetune.fraction=0"], r"finetune.fraction"),
        (["augment.split_min=0.8"], r"split_min"),
    ],
)
def test_cross_field_validation(override: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_config_is_frozen_and_flattens() -> None:
    cfg = load_config()
    with pytest.raises(Exception, match="frozen"):
        cfg.model.d_model = 3  # type: ignore[misc]
    flat = flatten(cfg)
    assert flat["model.d_model"] == 32 and flat["pretrain.teacher_temp"] == 0.04
    assert with_overrides(cfg, {"model.d_model": 64}).model.d_model == 64


def test_config_show_cli() -> None:
    result = runner.invoke(app, ["config", "show", "--set", "model.d_model=48"])
    assert result.exit_code == 0 and "d_model: 48" in result.output
    result = runner.invoke(app, ["config", "show", "--set", "model.d_model=abc"])
    assert result.exit_code == 2 and "model.d_model" in result.output
    result = runner.invoke(app, ["config", "show", "--config", "nope.yaml"])
    assert result.exit_code == 2 and "config file not found" in result.output
