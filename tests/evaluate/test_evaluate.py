"""Metrics, probes and fine-tuning pieces (docs/method.md §7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import ModelConfig
from jbot.evaluate.classifiers import knn_probe
from jbot.evaluate.knn import knn_search, top_cosine
from jbot.evaluate.metrics import auc, classification_metrics, eps_s_at_eps_b, fold_std
from jbot.model.encoder import JetEncoder
from jbot.train.finetune import EarlyStopping, JetClassifier, balanced_subset, llrd_param_groups
from tests.conftest import TINY


def test_auc_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    probs = rng.dirichlet(np.ones(3), 500) + np.eye(3)[y] * 0.3
    m = classification_metrics(y, probs, ("a", "b", "c"))
    for c, name in enumerate("abc"):
        assert m[f"auc_{name}"] == pytest.approx(roc_auc_score(y == c, probs[:, c]))
    assert m["acc"] == pytest.approx((probs.argmax(1) == y).mean())


def test_eps_s_at_eps_b_hand_made() -> None:
    # 10 background scores 0..9, 4 signals at 9.5, 8.5, 3.5, 0.5
    bkg = np.arange(10.0)
    sig = np.array([9.5, 8.5, 3.5, 0.5])
    score = np.concatenate([bkg, sig])
    is_sig = np.r_[np.zeros(10, bool), np.ones(4, bool)]
    assert eps_s_at_eps_b(is_sig, score, 0.0) == 0.25  # threshold above 9: only 9.5 passes
    assert eps_s_at_eps_b(is_sig, score, 0.1) == 0.5  # one background (9) allowed: 9.5 and 8.5
    assert eps_s_at_eps_b(is_sig, score, 0.6) == 0.75  # six backgrounds (4..9) allowed: 3.5 still out
    assert eps_s_at_eps_b(is_sig, score, 1.0) == 1.0
    assert auc(is_sig, score) == pytest.approx(roc_auc_score(is_sig, score))


def test_fold_std_hand_computed() -> None:
    y = np.repeat([0, 1], 10)
    # metric = mean of a per-jet value that is the jet's index: folds are random but disjoint and cover y
    values = np.arange(20.0)
    std = fold_std(lambda i: float(values[i].mean()), y, n_folds=10, seed=0)
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(10, shuffle=True, random_state=0).split(np.zeros(20), y)
    assert std == pytest.approx(np.std([values[i].mean() for _, i in folds]))
    assert np.isnan(fold_std(lambda i: 0.0, np.array([0, 1, 1]), n_folds=10))


def test_knn_matches_sklearn_and_chunking() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(300, 8)).astype(np.float32)
    query = rng.normal(size=(77, 8)).astype(np.float32)
    dist, idx = NearestNeighbors(n_neighbors=5).fit(ref).kneighbors(query)
    # ref_chunk 4 and 16: the threshold path (reference larger than the seed tiles); 1000: one plain top-k
    for chunk, ref_chunk in [(1, 4), (10, 16), (77, 7), (1000, 1000), (13, 1000)]:
        d, i = knn_search(torch.as_tensor(query), torch.as_tensor(ref), 5, chunk, ref_chunk)
        np.testing.assert_allclose(d.numpy(), dist, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(i.numpy(), idx)
        cos = top_cosine(torch.as_tensor(query), torch.as_tensor(ref), 5, chunk, ref_chunk).numpy()
        np.testing.assert_allclose(cos, -np.sort(-(query @ ref.T), axis=1)[:, :5], rtol=1e-5, atol=1e-5)
    y = rng.integers(0, 4, 300)
    ours = knn_probe(ref, y, query, k=7, n_classes=4).argmax(1)
    theirs = KNeighborsClassifier(n_neighbors=7).fit(ref, y).predict(query)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("n_layers", [2, 4])
def test_llrd_groups(n_layers: int) -> None:
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=n_layers, d_proj=8)
    model = JetClassifier(JetEncoder(cfg), n_classes=5)
    base, d = 1e-3, 0.7
    groups = llrd_param_groups(model, base, d)
    optimizer = torch.optim.Adam(groups, lr=base)
    lr_of: dict[int, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in lr_of, "each parameter in exactly one group"
            lr_of[id(p)] = group["lr"]
    names = dict(model.named_parameters())
    assert set(lr_of) == {id(p) for p in names.values()}
    for name, p in names.items():
        if name.startswith("head."):
            expected = base
        elif name.startswith("encoder.blocks."):
            j = n_layers - int(name.split(".")[2])  # last block: j = 1
            expected = base * d**j
        else:  # embed, cls_token, mask_token
            expected = base * d ** (n_layers + 1)
        assert lr_of[id(p)] == pytest.approx(expected), name


def test_early_stopping_restores_best_weights() -> None:
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2)
    snapshots = {}
    stopped_at = None
    for epoch, score in enumerate([0.5, 0.7, 0.6, 0.65, 0.8], start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        snapshots[epoch] = model.weight.clone()
        if stopper.update(score, model, epoch):
            stopped_at = epoch
            break
    assert stopped_at == 4 and stopper.best_epoch == 2
    stopper.restore(model)
    assert torch.equal(model.weight, snapshots[2])


def test_balanced_subset_deterministic() -> None:
    y = np.repeat(np.arange(5), [300, 250, 400, 200, 350])
    a = balanced_subset(y, 0.1, seed=3)
    b = balanced_subset(y, 0.1, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(y[a]).tolist() == [30] * 5
    assert not np.array_equal(a, balanced_subset(y, 0.1, seed=4))
    assert len(np.unique(a)) == len(a)


@pytest.mark.integration
def test_probe_and_finetune_cli(fake_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    sizes = ["--set", "data.n_train=400", "--set", "data.n_val=100", "--set", "data.n_test=200"]
    tiny = [a for item in TINY for a in ("--set", item)]
    result = runner.invoke(app, ["pretrain", "--data", str(fake_data), "--out", str(tmp_path / "pt"), *sizes, *tiny])
    assert result.exit_code == 0, result.output
    ckpt = str(tmp_path / "pt" / "checkpoint.pt")
    result = runner.invoke(app, ["probe", "--checkpoint", ckpt, "--data", str(fake_data), "--out", str(tmp_path),
                                 *sizes, "--set", "probe.silhouette_samples=100"])
    assert result.exit_code == 0, result.output
    assert "k-NN" in result.output and "auc_W" in result.output and "purity" in result.output
    assert (tmp_path / "probe.json").is_file()
    ft = ["--set", "finetune.epochs=3", "--set", "finetune.batch_size=64", "--set", "finetune.patience=2"]
    result = runner.invoke(app, ["finetune", "--checkpoint", ckpt, "--data", str(fake_data), "--fraction", "0.5",
                                 "--out", str(tmp_path / "ft"), *sizes, *ft])
    assert result.exit_code == 0, result.output
    assert "fine-tuned" in result.output and (tmp_path / "ft" / "classifier.pt").is_file()
    result = runner.invoke(app, ["finetune", "--from-scratch", "--data", str(fake_data), "--task", "tqg",
                                 "--out", str(tmp_path / "fs"), *sizes, *ft, *tiny[:0]])
    assert result.exit_code == 0, result.output
    assert "eps_s" not in result.output and "εs@εb=0.01" in result.output
    result = runner.invoke(app, ["finetune", "--data", str(fake_data)])
    assert result.exit_code == 2 and "--from-scratch" in result.output


def test_finetuning_is_repeatable_whatever_ran_before(fake_data: Path) -> None:
    """Dropout draws from torch's default generator, which a process seeds at random: fine-tuning seeds it."""
    from jbot.config import load_config
    from jbot.data.splits import make_split
    from jbot.train.finetune import finetune

    cfg = load_config(None, TINY + [f"data.dir={fake_data}", "finetune.epochs=2", "finetune.batch_size=64",
                                    "finetune.dropout=0.3"])
    split = make_split(fake_data, "5class", n_train=200, n_val=60, n_test=60)
    first = finetune(cfg, split, None)
    torch.rand(1000)  # whatever else the process drew in between
    second = finetune(cfg, split, None)
    assert first.history == second.history
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clustering_of_separated_and_of_mixed_classes() -> None:
    from jbot.config import ProbeConfig
    from jbot.evaluate.clustering import clustering_metrics

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 200)
    centres = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    apart = clustering_metrics(centres[y] + rng.normal(size=(600, 2)), y, 3, ProbeConfig(silhouette_samples=300))
    assert apart["purity"] == 1.0 and apart["ari"] == pytest.approx(1.0) and apart["nmi"] == pytest.approx(1.0)
    mixed = clustering_metrics(rng.normal(size=(600, 2)), y, 3, ProbeConfig(silhouette_samples=300))
    assert mixed["nmi"] < 0.05 and abs(mixed["ari"]) < 0.05 and mixed["purity"] < 0.45
