"""Streamed pre-training data (HDF5 and JetClass ROOT shards), jbot data convert, and data-parallel pre-training
under torchrun: real files, real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import JbotConfig, load_config
from jbot.data.jetnet import JET_KEY, PARTICLE_KEY, DataError, write_jetnet
from jbot.data.shards import CLASS_ATTR, find_shards, read_rows
from jbot.data.splits import Split, make_split
from jbot.data.stream import StreamSource
from jbot.train.checkpoint import load_checkpoint
from jbot.train.pretrain import Pretrainer, pretrain
from tests.conftest import TINY, NewStore, write_jetclass

runner = CliRunner()
BIN = Path(sys.executable).parent


def jets_with_ids(n: int, seed: int, first_id: int = 0) -> np.ndarray:
    """(n, 30, 4) valid jets, vectorised; the leading particle's eta_rel encodes the jet's id (id * 1e-5)."""
    rng = np.random.default_rng(seed)
    mult = rng.integers(3, 31, size=n)
    valid = np.arange(30)[None, :] < mult[:, None]
    pt = np.sort(rng.exponential(1.0, (n, 30)) + 1e-3, axis=1)[:, ::-1] * valid
    x = np.zeros((n, 30, 4), np.float32)
    x[..., 0] = rng.normal(0, 0.1, (n, 30)) * valid
    x[..., 1] = rng.normal(0, 0.1, (n, 30)) * valid
    x[..., 2] = pt / pt.sum(1, keepdims=True)
    x[..., 3] = valid
    x[:, 0, 0] = (first_id + np.arange(n)) * 1e-5
    return x


def ids_of(batch: torch.Tensor) -> list[int]:
    return [int(round(v)) for v in (batch[:, 0, 0].double() * 1e5).tolist()]


def write_shards(folder: Path, sizes: list[int], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        x = jets_with_ids(n, seed + i, start)
        with h5py.File(folder / f"part_{i:03d}.hdf5", "w") as f:  # uncompressed, like a user's own shards
            f[PARTICLE_KEY], f[JET_KEY] = x, np.ones((n, 4), np.float32)
        start += n
    return folder


@pytest.fixture(scope="module")
def tiny(fake_data: Path) -> tuple[JbotConfig, Split]:
    cfg = load_config(None, TINY + [f"data.dir={fake_data}", "pretrain.epochs=2"])
    return cfg, make_split(fake_data, "5class", n_train=320, n_val=100, n_test=100)


def test_streamed_epoch_equals_in_memory(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    x = split.train.x
    write_jetnet(tmp_path / "s" / "a_000.hdf5", x[:200], split.train.jet[:200])
    write_jetnet(tmp_path / "s" / "b_000.hdf5", x[200:], split.train.jet[200:])
    stream = StreamSource(find_shards(tmp_path / "s"), window=10_000, seed=cfg.pretrain.seed, device=torch.device("cpu"))
    streamed = pretrain(cfg, split, tmp_path / "a", source=stream).history
    in_memory = pretrain(cfg, split, tmp_path / "b").history
    for key in ("train/loss", "train/loss_part", "train/loss_cls", "train/loss_koleo", "diag/masked_fraction"):
        np.testing.assert_allclose(streamed[key], in_memory[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("world", [1, 2])
def test_stream_deals_each_jet_once_per_epoch_and_resumes_mid_epoch(tmp_path: Path, world: int) -> None:
    folder = write_shards(tmp_path / "s", [700, 300, 1000])  # 2000 jets in 7 windows of about 300
    source = StreamSource(find_shards(folder), window=300, seed=3, device=torch.device("cpu"))
    assert source.n_windows == 7
    batch = 64
    steps = source.steps(batch, world)
    for epoch in (0, 1):
        seen: list[int] = []
        for rank in range(world):
            full = list(source.batches(epoch, 0, batch, rank, world))
            assert len(full) == steps and all(b.shape == (batch // world, 30, 4) for b in full)
            seen += [i for b in full for i in ids_of(b)]
            later = list(source.batches(epoch, 11, batch, rank, world))  # a resume at step 11
            assert len(later) == steps - 11
            assert all(torch.equal(a, b) for a, b in zip(later, full[11:], strict=True))
        assert len(seen) == len(set(seen)) == steps * batch  # no jet twice
        assert steps * batch > 2000 - batch - world * 7 * 3  # at most the remainders dropped
    orders = [ids_of(next(iter(source.batches(e, 0, batch, 0, world)))) for e in (0, 1)]
    assert orders[0] != orders[1]  # reshuffled every epoch


def test_stream_host_memory_stays_bounded(tmp_path: Path) -> None:
    """A dataset 40x the window: a whole epoch's resident memory grows by the four window buffers (the reader's
    and three slots) and a fixed overhead, not by the data."""
    window = 5_000
    folder = write_shards(tmp_path / "s", [50_000] * 4)  # 200k jets = 92 MB of particles, 40 windows
    script = textwrap.dedent(f"""
        import json, sys, torch
        from jbot.data.shards import find_shards
        from jbot.data.stream import StreamSource
        def rss_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        source = StreamSource(find_shards(sys.argv[1]), window={window}, seed=0, device=torch.device("cpu"))
        before, peak, n = rss_mb(), 0.0, 0
        for b in source.batches(0, 0, 1024, 0, 1):
            n += len(b)
            peak = max(peak, rss_mb())
        print(json.dumps({{"jets": n, "growth_mb": peak - before}}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    window_mb = window * 30 * 4 * 4 / 2**20
    assert got["jets"] == 195 * 1024
    print(f"RSS growth {got['growth_mb']:.0f} MB streaming 92 MB of jets through {window_mb:.1f} MB windows")
    assert got["growth_mb"] < min(4 * window_mb + 30, 92 / 2)  # loading it all would add 92 MB


def test_mid_epoch_checkpoint_resumes_to_the_same_weights(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"checkpoint_every": 2})})
    folder = write_shards(tmp_path / "s", [200, 200])

    def source() -> StreamSource:
        return StreamSource(find_shards(folder), window=150, seed=0, device=torch.device("cpu"))

    whole = pretrain(cfg, split, tmp_path / "whole", source=source())

    def stop(i: int, steps: int) -> None:
        if trainer.epoch == 1 and i == 3:
            raise KeyboardInterrupt

    trainer = Pretrainer(cfg, split, tmp_path / "cut", source=source())
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(on_step=stop)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 2)  # epoch 2, after its second step
    resumed = pretrain(cfg, split, tmp_path / "cut", resume=tmp_path / "cut" / "checkpoint.pt", source=source())
    assert resumed.history["train/loss"] == pytest.approx(whole.history["train/loss"], rel=1e-6)
    a, b = load_checkpoint(whole.checkpoint)["student"], load_checkpoint(resumed.checkpoint)["student"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_shards_name_the_file(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "s", [100])
    (folder / "junk.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match=r"junk.hdf5: not a readable HDF5 file"):
        find_shards(folder)
    (folder / "junk.hdf5").unlink()
    with h5py.File(folder / "wrong.h5", "w") as f:
        f[PARTICLE_KEY] = np.zeros((5, 20, 3), np.float32)
    with pytest.raises(DataError, match=r"wrong.h5: dataset 'particle_features' has shape \(5, 20, 3\)"):
        find_shards(folder)
    (folder / "wrong.h5").unlink()
    with h5py.File(folder / "part_000.hdf5", "a") as f:
        f[PARTICLE_KEY][7, 0, 2] = np.nan
    with pytest.raises(DataError, match=r"part_000.hdf5 rows 0-100: dataset 'particle_features': NaN"):
        read_rows(find_shards(folder)[0], 0, 100)
    with pytest.raises(DataError, match="no .hdf5, .h5, .root or .parquet files"):
        find_shards(tmp_path)


# ---------------------------------------------------------------------------------------------------- JetClass


def write_jetclass_root(path: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    """A ROOT file in JetClass's layout, some jets above 30 particles (cut to the 30 hardest)."""
    return write_jetclass(path, n, seed)


@pytest.mark.integration
def test_jetclass_root_files_are_read_converted_and_trained_on(tmp_path: Path, new_store: NewStore) -> None:
    raw = tmp_path / "jetclass"
    raw.mkdir()
    truth = write_jetclass_root(raw / "HToBB_000.root", 300, 1)
    write_jetclass_root(raw / "ZJetsToNuNu_000.root", 300, 2)
    shards = find_shards(raw)
    assert [(s.path.name, s.kind, s.n, s.label) for s in shards] == [
        ("HToBB_000.root", "root", 300, "Hbb"), ("ZJetsToNuNu_000.root", "root", 300, "QCD")]
    x, jets = read_rows(shards[0], 0, 300)
    first = slice(0, truth["counts"][0])
    pts = np.sort(truth["pt"][first])[::-1]
    n0 = min(30, truth["counts"][0])
    np.testing.assert_allclose(x[0, :n0, 2], pts[:n0] / truth["jet_pt"][0], rtol=1e-5)  # pT-ordered pT fraction
    assert x[0, :n0, 3].all() and not x[0, n0:].any()
    assert (x[..., 3].sum(1) == np.minimum(truth["counts"], 30)).all()
    np.testing.assert_allclose(jets[:, 0], truth["jet_pt"], rtol=1e-6)

    out = runner.invoke(app, ["data", "convert", "--from", str(raw), "--out", str(tmp_path / "h5"), "--chunk", "128"])
    assert out.exit_code == 0, out.output
    assert "wrote 2 shards (600 jets in all)" in out.output
    with h5py.File(tmp_path / "h5" / "HToBB_000.hdf5") as f:
        np.testing.assert_array_equal(f[PARTICLE_KEY][()], x)
        assert f.attrs[CLASS_ATTR] == "Hbb"
    again = runner.invoke(app, ["data", "convert", "--from", str(raw), "--out", str(tmp_path / "h5")])
    assert "2 already converted" in again.output

    tracking = new_store(tmp_path)
    for data in (raw, tmp_path / "h5"):  # streamed from ROOT directly, and from the converted shards
        out = runner.invoke(app, ["pretrain", "--data", str(data), "--out", str(tmp_path / f"run-{data.name}"),
                                  "--tracking-uri", tracking,
                                  *[a for s in TINY for a in ("--set", s)], "--set", "pretrain.epochs=2",
                                  "--set", "data.stream=true", "--set", "data.window=256",
                                  "--set", f"data.val_dir={tmp_path / 'h5'}"])
        assert out.exit_code == 0, out.output
        assert "k-NN" in out.output
        state = load_checkpoint(tmp_path / f"run-{data.name}" / "checkpoint.pt")
        assert state["epoch"] == 2 and state["history"]["val/knn_acc"]


# ----------------------------------------------------------------------------------------------- torchrun (DDP)


def _pretrain_args(data: Path, out: Path, store: Path, epochs: int) -> list[str]:
    sets = TINY + [f"pretrain.epochs={epochs}", "pretrain.batch_size=64", "runtime.threads=1"]
    return ["pretrain", "--data", str(data), "--out", str(out), "--tracking-uri", f"sqlite:///{store}",
            *[a for s in sets for a in ("--set", s)]]


def _torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "--no-python", str(BIN / "jbot"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_torchrun_two_processes_train_like_one_and_resume_with_another_world_size(
        fake_data: Path, tmp_path: Path, new_store: NewStore) -> None:
    store = Path(new_store(tmp_path).removeprefix("sqlite:///"))
    two = _torchrun(2, _pretrain_args(fake_data, tmp_path / "two", store, 2), tmp_path)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count("pre-training jBOT") == 1  # rank 1 prints nothing
    one = subprocess.run([str(BIN / "jbot"), *_pretrain_args(fake_data, tmp_path / "one", store, 2)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    h2 = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["history"]
    h1 = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["history"]
    for key in ("train/loss", "train/loss_part", "train/loss_cls", "train/loss_koleo", "diag/masked_fraction",
                "diag/center_norm_cls"):
        np.testing.assert_allclose(h2[key], h1[key], rtol=1e-4, err_msg=key)

    # resume the 2-process checkpoint in one process, for a third epoch
    resumed = subprocess.run([str(BIN / "jbot"), "pretrain", "--resume", str(tmp_path / "two" / "checkpoint.pt"),
                              "--out", str(tmp_path / "two"), "--set", "pretrain.epochs=3",
                              "--tracking-uri", f"sqlite:///{store}"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    state = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert state["epoch"] == 3 and len(state["history"]["train/loss"]) == 3

    # streamed: each rank reads its own rows of every file, both take the same number of steps (no hang)
    streamed = _torchrun(2, _pretrain_args(fake_data, tmp_path / "stream", store, 2) + [
        "--set", "data.stream=true", "--set", "data.window=700", "--set", f"data.val_dir={fake_data}"], tmp_path)
    assert streamed.returncode == 0, streamed.stdout[-3000:] + streamed.stderr[-3000:]
    state = load_checkpoint(tmp_path / "stream" / "checkpoint.pt")
    assert state["epoch"] == 2 and np.isfinite(state["history"]["train/loss"]).all()
    assert state["history"]["val/knn_acc"] and "jets streamed from" in streamed.stdout
