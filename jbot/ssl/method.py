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
from jbot.ssl.losses import cls_loss, entropy, koleo, part_loss_view
from jbot.train.distributed import SINGLE, Comm

TERMS = ("loss", "loss_part", "loss_cls", "loss_koleo", "teacher_entropy", "student_entropy", "masked_fraction")


class JBOTNetwork(nn.Module):
    """Encoder + shared projection head; the student and (as an EMA copy) the teacher."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = JetEncoder(cfg, dropout)
        self.head = ProjectionHead(cfg.d_model, cfg.d_proj, cfg.head_hidden_mult)

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> backbone [CLS] (B, D), projected [CLS] (B, K), projected particle tokens (B, P, K)."""
        cls, part = self.encoder(x, masked)
        return cls, self.head(cls), self.head(part)


class Distillation(nn.Module):
    """Holds student, teacher and centres; ``forward`` computes the losses of one batch."""

    def __init__(self, student: JBOTNetwork, teacher: JBOTNetwork, centers: Centers, augment_cfg: AugmentConfig,
                 mask_cfg: MaskConfig, train_cfg: PretrainConfig, comm: Comm = SINGLE) -> None:
        super().__init__()
        self.student, self.teacher, self.centers = student, teacher, centers
        self.comm = comm
        # the module the student's forward goes through: DDP's wrapper under torchrun (gradient all-reduce)
        self.student_forward: nn.Module = student
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
        with torch.no_grad():
            _, t_cls, t_part = self.teacher(views)
        s_back, s_cls, s_part = self.student_forward(views, masked)
        t_cls, t_part, s_cls, s_part = t_cls.float(), t_part.float(), s_cls.float(), s_part.float()
        tt, ts = cfg.teacher_temp, cfg.student_temp
        l_cls = cls_loss((t_cls[:B], t_cls[B:]), (s_cls[:B], s_cls[B:]), self.centers.cls, tt, ts)
        u, v = slice(0, B), slice(B, 2 * B)
        l_part = 0.5 * (
            part_loss_view(t_part[u], s_part[u], masked[u], self.centers.part, tt, ts, cfg.part_norm, comm.share)
            + part_loss_view(t_part[v], s_part[v], masked[v], self.centers.part, tt, ts, cfg.part_norm, comm.share)
        )
        l_koleo = koleo(comm.gather(s_back[:B].float()))  # nearest neighbours among the whole global batch
        zero = torch.zeros((), device=views.device)
        total = (l_part if cfg.use_part_loss else zero) + (l_cls if cfg.use_cls_loss else zero)
        total = total + cfg.koleo_weight * l_koleo
        with torch.no_grad():
            valid = views[..., VALID] > 0.5
            self.centers.update(t_cls, t_part, valid, comm)
            monitors = torch.stack([
                entropy(t_cls, tt, self.centers.cls), entropy(s_cls, ts),
                comm.sum(masked.float().sum()) / comm.sum(valid.float().sum()).clamp_min(1),
            ])
        return torch.cat([torch.stack([total, l_part.detach(), l_cls.detach(), l_koleo.detach()]), monitors])
