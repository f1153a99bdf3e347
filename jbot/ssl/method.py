"""One jBOT training step (SPEC §2-5): two views -> teacher (full views) -> student (masked views) -> losses."""

from __future__ import annotations

import torch
from torch import nn

from jbot.config import AugmentConfig, MaskConfig, ModelConfig, PretrainConfig
from jbot.data.augment import augment
from jbot.data.classes import VALID
from jbot.data.draws import Draws
from jbot.data.masking import pt_aware_mask
from jbot.model.encoder import JetEncoder
from jbot.model.heads import ProjectionHead
from jbot.ssl.center import Centers
from jbot.ssl.losses import cls_loss, cross_entropy, entropy, koleo, part_loss
from jbot.train.distributed import SINGLE, Comm

TERMS = ("loss", "loss_part", "loss_cls", "loss_koleo", "teacher_entropy", "student_entropy", "masked_fraction")


class JBOTNetwork(nn.Module):
    """Encoder + shared projection head; the student and (as an EMA copy) the teacher."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = JetEncoder(cfg, dropout)
        self.head = ProjectionHead(cfg.d_model, cfg.d_proj, cfg.head_hidden_mult)

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None, project: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> backbone [CLS] (B, D), projected [CLS] (B, K), projected particle tokens: all of them (B, P, K), or
        with ``project`` (B, P) only those it selects, in row-major order (M, K)."""
        cls, part = self.encoder(x, masked)
        return cls, self.head(cls), self.head(part if project is None else part[project])


class Distillation(nn.Module):
    """Holds student, teacher and centres; ``losses`` computes the loss terms of one batch.

    Only the student's masked particle tokens enter L_Part and only the teacher's valid ones L_Part and the
    centre, so by default the projection head runs on those alone (the student's on a fraction of the tokens:
    a large saving of head compute, forward and backward). ``static=True`` keeps every
    shape independent of the data instead (the head on all tokens, no host synchronisation): what
    ``torch.compile`` as one graph and CUDA graphs need. Both give the same losses.
    """

    def __init__(self, student: JBOTNetwork, teacher: JBOTNetwork, centers: Centers, augment_cfg: AugmentConfig,
                 mask_cfg: MaskConfig, train_cfg: PretrainConfig, comm: Comm = SINGLE, static: bool = False) -> None:
        super().__init__()
        self.static = static
        self.student, self.teacher, self.centers = student, teacher, centers
        self.comm = comm
        # the modules the forwards go through: DDP's wrapper under torchrun (gradient all-reduce), compiled ones
        self.student_forward: nn.Module = student
        self.teacher_forward: nn.Module = teacher
        self.augment_cfg, self.mask_cfg, self.cfg = augment_cfg, mask_cfg, train_cfg

    def views(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views stacked (2B, P, F) and the student's ``masked`` (2B, P). Under data parallelism
        ``x`` is this rank's block of the global batch and gets the global batch's draws for its rows."""
        b, r, R = x.shape[0], self.comm.rank, self.comm.world
        B = b * R  # the global batch: this rank holds its rows r*b .. (r+1)*b - 1
        mine = None if R == 1 else torch.arange(r * b, (r + 1) * b)
        one = Draws(gen, mine, B)
        views = torch.cat([augment(x, one, self.augment_cfg), augment(x, one, self.augment_cfg)])
        # the global views are stacked (u of all B jets, v of all B jets): this rank's u and v rows of that stack
        both = None if mine is None else torch.cat([mine, B + mine])
        masked = pt_aware_mask(views, self.mask_cfg, Draws(gen, both, 2 * B))
        return views, masked

    def losses(self, views: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """All monitored terms as one vector (``TERMS`` order); element 0 is the loss to minimise."""
        cfg, comm = self.cfg, self.comm
        B = views.shape[0] // 2
        valid = views[..., VALID] > 0.5  # (2B, P); masked tokens are valid ones
        with torch.no_grad():  # the teacher's particle tokens serve the loss (masked ones) and the centre (valid)
            _, t_cls, t_part = self.teacher_forward(views, None, None if self.static else valid)
        s_back, s_cls, s_part = self.student_forward(views, masked, None if self.static else masked)
        t_cls, t_part, s_cls, s_part = t_cls.float(), t_part.float(), s_cls.float(), s_part.float()
        tt, ts = cfg.teacher_temp, cfg.student_temp
        l_cls = cls_loss((t_cls[:B], t_cls[B:]), (s_cls[:B], s_cls[B:]), self.centers.cls, tt, ts)
        if self.static:  # (2B, P) cross-entropies of every token
            h = cross_entropy(t_part, s_part, self.centers.part, tt, ts)
        else:  # of the masked tokens, put back in their places
            h_masked = cross_entropy(t_part[masked[valid]], s_part, self.centers.part, tt, ts)
            h = torch.zeros(masked.shape, dtype=h_masked.dtype, device=views.device).masked_scatter(masked, h_masked)
        u, v = slice(0, B), slice(B, 2 * B)
        l_part = 0.5 * (part_loss(h[u], masked[u], cfg.part_norm, comm.share)
                        + part_loss(h[v], masked[v], cfg.part_norm, comm.share))
        l_koleo = koleo(comm.gather(s_back[:B].float()))  # nearest neighbours among the whole global batch
        zero = torch.zeros((), device=views.device)
        total = (l_part if cfg.use_part_loss else zero) + (l_cls if cfg.use_cls_loss else zero)
        total = total + cfg.koleo_weight * l_koleo
        with torch.no_grad():
            self.centers.update(t_cls, t_part, valid if self.static else None, comm)
            monitors = torch.stack([
                entropy(t_cls, tt, self.centers.cls), entropy(s_cls, ts),
                comm.sum(masked.float().sum()) / comm.sum(valid.float().sum()).clamp_min(1),
            ])
        return torch.cat([torch.stack([total, l_part.detach(), l_cls.detach(), l_koleo.detach()]), monitors])
