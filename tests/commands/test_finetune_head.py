"""A trained classifier head is continued only on the labels it was trained on: a head of another task with as
many classes (a tqg tagger fine-tuned on a two-label preset file) starts fresh."""

from __future__ import annotations

from pathlib import Path

from jbot.commands.finetune import same_labels
from jbot.data.splits import make_split
from jbot.model.heads import ClassifierHead
from jbot.train.checkpoint import LoadedModel, load_model
from tests.conftest import tiny_checkpoint, write_fake_folder


def test_a_head_is_continued_only_on_its_own_labels(tmp_path: Path) -> None:
    split = make_split(write_fake_folder(tmp_path / "jets", 60), "tqg", n_train=40, n_val=20, n_test=20)
    encoder = load_model(tiny_checkpoint(tmp_path / "enc.pt", seed=0)).encoder
    head = ClassifierHead(encoder.cfg.d_model, 2)
    tagger = LoadedModel(encoder, head, ("qcd", "top"), {})
    assert same_labels(tagger, split) is head
    other = LoadedModel(encoder, head, ("QCD", "Hbb"), {})  # two classes too, another task
    assert same_labels(other, split) is None
    assert same_labels(LoadedModel(encoder, None, (), {}), split) is None and same_labels(None, split) is None
