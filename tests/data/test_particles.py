"""Any particle count P per jet (docs/method.md §1): JetNet-layout files with P != 30 (JetNet150 and one's own
jets) are read with ``model.n_particles`` slots per jet (the hardest kept, or zero-padded), end to end through
the CLI; 30-particle files read with the default are exactly what the file holds."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.data.classes import CLASSES, PT, VALID
from jbot.data.jetnet import JET_KEY, PARTICLE_KEY, DataError, class_file, read_jetnet
from jbot.data.splits import make_split
from tests.conftest import TINY, NewStore, cli_ok, fake_jets, set_args

runner = CliRunner()


def write_file(path: Path, particles: np.ndarray, jets: np.ndarray) -> Path:
    """One class file as ``write_fake_folder`` writes it (the two datasets, float32, gzip)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(PARTICLE_KEY, data=particles.astype(np.float32), compression="gzip")
        f.create_dataset(JET_KEY, data=jets.astype(np.float32), compression="gzip")
    return path


def jets_150(n: int, cls_index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """JetNet150-like jets: ``fake_jets``' hard constituents, then soft ones up to 40-100 per jet (pT-sorted)."""
    particles, jets = fake_jets(n, cls_index, rng, n_particles=150)
    for i in range(n):
        hard = int(particles[i, :, VALID].sum())
        total = int(rng.integers(40, 101))
        softest = particles[i, hard - 1, PT]
        soft = np.sort(rng.uniform(0.1, 0.9, total - hard))[::-1] * softest
        particles[i, hard:total, 0] = rng.normal(0, 0.2, total - hard)
        particles[i, hard:total, 1] = rng.normal(0, 0.2, total - hard)
        particles[i, hard:total, PT] = soft
        particles[i, hard:total, VALID] = 1.0
        jets[i, 3] = total
    return particles, jets


def raw(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[PARTICLE_KEY][()])


@pytest.fixture(scope="module")
def folder_150(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-class JetNet150-layout folder: 240 q and g jets, 100 of each of W, Z, t."""
    folder = tmp_path_factory.mktemp("jetnet150")
    rng = np.random.default_rng(150)
    for i, c in enumerate(CLASSES):
        write_file(class_file(folder, c), *jets_150(240 if c in ("q", "g") else 100, i, rng))
    return folder


@pytest.fixture
def shuffled_30(tmp_path: Path) -> Path:
    """A 30-particle top file (17-28 constituents a jet), every third jet's slots shuffled out of pT order."""
    rng = np.random.default_rng(3)
    particles, jets = fake_jets(60, 4, rng)
    for i in range(0, 60, 3):
        particles[i] = particles[i][rng.permutation(30)]
    return write_file(tmp_path / "t.hdf5", particles, jets)


def hardest(particles: np.ndarray, n: int) -> np.ndarray:
    """Per jet, a reference: its valid slots by decreasing pT_rel, the first ``n`` of them, zero-padded to ``n``."""
    out = np.zeros((len(particles), n, particles.shape[2]), np.float32)
    for i, jet in enumerate(particles):
        valid = jet[jet[:, VALID] == 1]
        kept = valid[np.argsort(-valid[:, PT], kind="stable")][:n]
        out[i, :len(kept)] = kept
    return out


def test_cut_keeps_the_hardest(shuffled_30: Path) -> None:
    stored = raw(shuffled_30)
    cut = read_jetnet(shuffled_30, 20).particles
    assert cut.shape == (60, 20, 4) and cut.dtype == np.float32
    np.testing.assert_array_equal(cut, hardest(stored, 20))
    assert (cut[..., VALID] == 1).sum() == np.minimum((stored[..., VALID] == 1).sum(axis=1), 20).sum()
    assert np.all(np.diff(cut[..., PT], axis=1) <= 0), "highest pT_rel first"


def test_pad_adds_empty_slots(shuffled_30: Path) -> None:
    stored = raw(shuffled_30)
    padded = read_jetnet(shuffled_30, 40).particles
    assert padded.shape == (60, 40, 4)
    assert not padded[:, 30:].any(), "padded slots: all features 0, valid = 0"
    np.testing.assert_array_equal(padded, hardest(stored, 40))


def test_default_reads_30_particle_files_as_stored(shuffled_30: Path, tmp_path: Path) -> None:
    """n_particles = 30 on 30-particle files: the arrays h5py reads, bit for bit (even jets out of pT order),
    and the split's fingerprint is the one it had before n_particles existed."""
    stored = raw(shuffled_30)
    for read in (read_jetnet(shuffled_30), read_jetnet(shuffled_30, 30)):
        np.testing.assert_array_equal(read.particles, stored)
        assert read.particles.dtype == stored.dtype
    rng = np.random.default_rng(0)
    for i, c in enumerate(CLASSES):
        write_file(class_file(tmp_path / "d", c), *fake_jets(40, i, rng))
    default = make_split(tmp_path / "d", "5class", n_train=100, n_val=25, n_test=50)
    same = make_split(tmp_path / "d", "5class", n_train=100, n_val=25, n_test=50, n_particles=30)
    cut = make_split(tmp_path / "d", "5class", n_train=100, n_val=25, n_test=50, n_particles=12)
    assert same.fingerprint == default.fingerprint != cut.fingerprint
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(same, part).x, getattr(default, part).x)
        assert getattr(cut, part).x.shape[1:] == (12, 4)
    files = {c: raw(class_file(tmp_path / "d", c)) for c in CLASSES}
    rows = np.concatenate(list(files.values()))
    assert {r.tobytes() for r in default.train.x} <= {r.tobytes() for r in rows}  # the rows as stored


def test_jetnet150_is_read_at_any_count(folder_150: Path) -> None:
    stored = raw(class_file(folder_150, "w"))
    assert stored.shape == (100, 150, 4)
    np.testing.assert_array_equal(read_jetnet(class_file(folder_150, "w"), 150).particles, stored)
    np.testing.assert_array_equal(read_jetnet(class_file(folder_150, "w"), None).particles, stored)
    np.testing.assert_array_equal(read_jetnet(class_file(folder_150, "w")).particles, stored[:, :30])


def test_validation_stays_strict_at_150(folder_150: Path, tmp_path: Path) -> None:
    particles, jets = jets_150(20, 0, np.random.default_rng(1))
    cases = {
        "shape": (particles[..., :3], r"'particle_features' has shape \(20, 150, 3\), expected \(N, P, 4\)"),
        "flat": (particles[..., 0], r"'particle_features' has shape \(20, 150\), expected \(N, P, 4\)"),
        "nan": (np.where(np.arange(20)[:, None, None] == 7, np.nan, particles),
                r"'particle_features': NaN or inf values in 1 of 20 jets \(first at index 7\)"),
        "pads": (particles.copy(), r"non-zero features in padded slots \(valid = 0\) in 1 of 20 jets"),
    }
    cases["pads"][0][4, -1, 0] = 0.5
    for name, (bad, message) in cases.items():
        path = write_file(tmp_path / f"{name}.hdf5", bad, jets)
        with pytest.raises(DataError, match=message) as info:
            read_jetnet(path, 150)
        assert str(path) in str(info.value)


@pytest.mark.integration
def test_cli_end_to_end_on_jetnet150(folder_150: Path, tmp_path: Path, new_store: NewStore) -> None:
    """data info, pretrain with model.n_particles=150, then probe, finetune, anomaly, embed and export of that
    encoder (which carry its 150 particles: no --set needed), ONNX Runtime matching the torch encoder."""
    ort = pytest.importorskip("onnxruntime", reason="install the export extra: pip install 'jbot-hep[export]'")
    store = new_store(tmp_path / "store")
    client = MlflowClient(store)
    ok = cli_ok(store)

    info = runner.invoke(app, ["data", "info", str(folder_150), "--html", str(tmp_path / "info.html")])
    assert info.exit_code == 0 and "240" in info.output and "W" in info.output, info.output

    sizes = ["data.n_train=300", "data.n_val=50", "data.n_test=100"]
    small = ["anomaly.reference_size=100", "anomaly.gmm_components=2", "anomaly.knn_k=5", "anomaly.cosine_k=5",
             "finetune.epochs=1", "finetune.batch_size=64", "evaluate.n_folds=2", "probe.silhouette_samples=100",
             "tracking.log_system_metrics=false"]
    data = ["--data", str(folder_150)]
    ok("pretrain", *data, "--out", str(tmp_path / "pt"), *set_args(TINY + sizes + small + ["model.n_particles=150"]))
    (pre,) = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    assert pre.data.params["model.n_particles"] == "150"
    model_input = get_model_info(pre.data.tags["jbot.model_uri"]).metadata["jbot.input"]
    assert model_input.startswith("float jets (N, 150, 4): "), (
        "pre-training read the split with model.n_particles slots per jet (jbot/commands/common.py load_split)")
    run = pre.info.run_id

    ok("probe", "--run-id", run, *data, *set_args(sizes + small))
    ok("finetune", "--run-id", run, *data, "--out", str(tmp_path / "ft"), *set_args(sizes + small))
    ok("anomaly", "--run-id", run, *data, "--out", str(tmp_path / "an"), *set_args(sizes + small))
    for name in ("jbot-probe", "jbot-finetune", "jbot-anomaly"):
        (done,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert done.info.status == "FINISHED" and done.data.params["model.n_particles"] == "150", name

    jets_file = class_file(folder_150, "t")
    ok("embed", "--run-id", run, "--input", str(jets_file), "--out", str(tmp_path / "emb.npz"))
    embedded = np.load(tmp_path / "emb.npz")
    assert embedded["particles"].shape == (100, 150, 16) and embedded["cls"].shape == (100, 16)

    ok("export", "--run-id", run, "--out", str(tmp_path / "enc.onnx"))
    from jbot.evaluate.embed import infer
    from jbot.tracking.models import load_from_uri

    jets = read_jetnet(jets_file, 150).particles[:37]  # not the batch the graph was traced with
    session = ort.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [150, 4]
    cls, particles = session.run(None, {"jets": jets})
    torch_out = infer(load_from_uri(run, store).encoder, jets, particles=True)
    np.testing.assert_allclose(cls, torch_out.cls, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(particles, torch_out.particles, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(cls, embedded["cls"][:37], atol=1e-4, rtol=1e-4)


@pytest.mark.generate
def test_generate_keeps_the_hardest_particles(tmp_path: Path) -> None:
    pytest.importorskip("pythia8mc", reason="install the generate extra: pip install 'jbot-hep[generate]'")
    result = runner.invoke(app, ["data", "generate", "--out", str(tmp_path), "--classes", "q", "--jets-per-class",
                                   "20", "--chunk-size", "20", "--particles", "60", "--seed", "2"])
    assert result.exit_code == 0, result.output
    jets = read_jetnet(tmp_path / "q.hdf5", None)
    assert jets.particles.shape == (20, 60, 4)
    stored = (jets.particles[..., VALID] == 1).sum(axis=1)
    np.testing.assert_array_equal(stored, np.minimum(jets.jets[:, 3], 60))  # all constituents, up to 60
    assert stored.max() > 30, "1 TeV jets have more than 30 constituents"
    assert np.all(np.diff(jets.particles[..., PT], axis=1) <= 1e-6), "constituents sorted by pT"
    np.testing.assert_array_equal(read_jetnet(tmp_path / "q.hdf5", 30).particles, jets.particles[:, :30])
