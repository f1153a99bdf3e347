from __future__ import annotations

import pytest
import torch

from jbot.config import ModelConfig
from jbot.model.encoder import JetEncoder
from jbot.model.heads import ClassifierHead, ProjectionHead
from tests.conftest import jet_batch

S = ModelConfig(d_model=32, n_heads=4, n_layers=2, d_proj=16)
B = ModelConfig(d_model=64, n_heads=6, n_layers=4, d_proj=32)


@pytest.mark.parametrize(("cfg", "count"), [(S, 25_600), (B, 196_176)])
def test_parameter_counts_match_spec(cfg: ModelConfig, count: int) -> None:
    enc = JetEncoder(cfg)
    assert enc.backbone_parameters() == count
    assert enc.blocks[0].attn.head_dim == cfg.d_model // cfg.n_heads  # jBOT-B: 6 heads x 10


@pytest.mark.parametrize("cfg", [S, B])
def test_permutation_invariant(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    enc = JetEncoder(cfg).eval()
    x = jet_batch(8)
    perm = torch.randperm(x.shape[1])
    with torch.no_grad():
        cls, part = enc(x)
        cls_p, part_p = enc(x[:, perm])
    torch.testing.assert_close(cls_p, cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part_p, part[:, perm], atol=1e-5, rtol=1e-5)


def test_padding_invariant_with_mask_and_not_without() -> None:
    torch.manual_seed(0)
    enc = JetEncoder(S).eval()
    x = jet_batch(8)
    longer = torch.cat([x, torch.zeros(8, 10, 4)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(enc(longer)[0], enc(x)[0], atol=1e-5, rtol=1e-5)
        published = JetEncoder(S.model_copy(update={"mask_padding": False})).eval()
        published.load_state_dict(enc.state_dict())
        assert not torch.allclose(published(longer)[0], published(x)[0], atol=1e-4)


def test_mask_token_replaces_embeddings_and_heads() -> None:
    torch.manual_seed(0)
    enc = JetEncoder(S).eval()
    x = jet_batch(4)
    masked = torch.zeros(4, 30, dtype=torch.bool)
    masked[:, 0] = True
    with torch.no_grad():
        assert not torch.allclose(enc(x, masked)[0], enc(x)[0])
    assert torch.all(enc.cls_token == 0)
    z = ProjectionHead(32, 16)(torch.randn(5, 7, 32))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(5, 7))
    assert ClassifierHead(32, 5)(torch.randn(3, 32)).shape == (3, 5)
