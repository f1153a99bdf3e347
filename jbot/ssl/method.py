"""The jBOT method (docs/method.md §2-5): two views -> teacher (full views) -> student (masked views) -> losses.

Each piece is one call of ``Distillation`` that the pre-training step (``jbot.train.pretrain.pretrain_step``)
makes in turn: ``views``, ``teacher_outputs``, ``student_outputs``, ``losses``, then, after the optimizer and
the EMA, ``monitors``. None of them updates anything: the step updates the centres itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from jbot.comm import SINGLE, Comm
from jbot.config import AugmentConfig, MaskConfig, ModelConfig, PretrainConfig
from jbot.data.augment import augment
from jbot.data.classes import VALID
from jbot.data.draws import Draws
from jbot.data.features import PAPER_COLUMNS, Columns
from jbot.data.masking import pt_aware_mask
from jbot.model.heads import ProjectionHead
from jbot.model.registry import build_encoder
from jbot.ssl.center import Centers
from jbot.ssl.losses import cls_loss, cross_entropy, entropy, koleo, part_loss

TERMS = ("loss", "loss_part", "loss_cls", "loss_koleo", "teacher_entropy", "student_entropy", "masked_fraction")
LOSS_TERMS = TERMS[:4]  # ``Distillation.losses``; ``Distillation.monitors`` gives the rest

# a network as the step calls it (the network itself, DDP's wrapper, a compiled one):
# (x, masked, project) -> backbone [CLS], projected [CLS], projected particle tokens (``JBOTNetwork.forward``)
Forward = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None],
                   tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class JBOTNetwork(nn.Module):
    """Encoder + shared projection head; the student and (as an EMA copy) the teacher."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = build_encoder(cfg, dropout)
        self.head = ProjectionHead(cfg.d_model, cfg.d_proj, cfg.head_hidden_mult)

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None, project: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> backbone [CLS] (B, D), projected [CLS] (B, K), projected particle tokens: all of them (B, P, K), or
        with ``project`` (B, P) only those it selects, in row-major order (M, K)."""
        cls, part = self.encoder(x, masked)
        return cls, self.head(cls), self.head(part if project is None else part[project])


class TeacherOutputs(NamedTuple):
    """The teacher's projections of both views stacked (2B = u then v), in float32, without gradient."""

    cls: torch.Tensor  # (2B, K)
    part: torch.Tensor  # every particle token (2B, P, K), or the valid ones alone, in row-major order (M, K)
    valid: torch.Tensor  # (2B, P) the views' valid particles
    part_valid: torch.Tensor | None  # which of ``part``'s tokens the centre averages: ``valid``, or None (all)


class StudentOutputs(NamedTuple):
    """The student's outputs of both masked views stacked (2B), with gradient."""

    backbone: torch.Tensor  # (2B, D) [CLS] before the head (KoLeo)
    cls: torch.Tensor  # (2B, K) float32
    part: torch.Tensor  # float32: every particle token (2B, P, K), or the masked ones alone (M, K)
    masked: torch.Tensor  # (2B, P) the tokens the student saw as [MASK]


class Distillation:
    """The method's pieces of one batch: views, the teacher's and the student's outputs, losses and monitors.

    Only the student's masked particle tokens enter L_Part and only the teacher's valid ones L_Part and the
    centre, so by default the projection head runs on those alone (the student's on a fraction of the tokens:
    a large saving of head compute, forward and backward). ``static=True`` keeps every
    shape independent of the data instead (the head on all tokens, no host synchronisation): what a compiled
    ``losses`` without graph breaks and CUDA graphs need. Both give the same losses.
    """

    def __init__(self, centers: Centers, augment_cfg: AugmentConfig, mask_cfg: MaskConfig, train_cfg: PretrainConfig,
                 comm: Comm = SINGLE, static: bool = False, cols: Columns = PAPER_COLUMNS) -> None:
        self.static, self.cols = static, cols
        self.centers, self.comm = centers, comm
        self.augment_cfg, self.mask_cfg, self.cfg = augment_cfg, mask_cfg, train_cfg

    def views(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views stacked (2B, P, F) and the student's ``masked`` (2B, P). Under data parallelism
        ``x`` is this rank's block of the global batch and gets the global batch's draws for its rows."""
        b, r, R = x.shape[0], self.comm.rank, self.comm.world
        B = b * R  # the global batch: this rank holds its rows r*b .. (r+1)*b - 1
        mine = None if R == 1 else torch.arange(r * b, (r + 1) * b)
        one = Draws(gen, mine, B)
        views = torch.cat([augment(x, one, self.augment_cfg, self.cols), augment(x, one, self.augment_cfg, self.cols)])
        # the global views are stacked (u of all B jets, v of all B jets): this rank's u and v rows of that stack
        both = None if mine is None else torch.cat([mine, B + mine])
        masked = pt_aware_mask(views, self.mask_cfg, Draws(gen, both, 2 * B))
        return views, masked

    def teacher_outputs(self, teacher: Forward, views: torch.Tensor) -> TeacherOutputs:
        """The teacher on the full views (2B, P, F), without gradient: its particle tokens serve the loss (the
        masked ones) and the centre (the valid ones)."""
        valid = views[..., VALID] > 0.5  # (2B, P); masked tokens are valid ones
        with torch.no_grad():
            _, t_cls, t_part = teacher(views, None, None if self.static else valid)
        return TeacherOutputs(t_cls.float(), t_part.float(), valid, valid if self.static else None)

    def student_outputs(self, student: Forward, views: torch.Tensor, masked: torch.Tensor) -> StudentOutputs:
        """The student on the views with the ``masked`` (2B, P) particles replaced by [MASK]."""
        s_back, s_cls, s_part = student(views, masked, None if self.static else masked)
        return StudentOutputs(s_back, s_cls.float(), s_part.float(), masked)

    def losses(self, teacher: TeacherOutputs, student: StudentOutputs) -> torch.Tensor:
        """The loss terms as one vector (``LOSS_TERMS`` order); element 0 is the loss to minimise. Reads the
        centres, changes nothing."""
        cfg, comm = self.cfg, self.comm
        masked, valid = student.masked, teacher.valid
        B = masked.shape[0] // 2
        tt, ts = cfg.teacher_temp, cfg.student_temp
        l_cls = cls_loss((teacher.cls[:B], teacher.cls[B:]), (student.cls[:B], student.cls[B:]), self.centers.cls,
                         tt, ts)
        if self.static:  # (2B, P) cross-entropies of every token
            h = cross_entropy(teacher.part, student.part, self.centers.part, tt, ts)
        else:  # of the masked tokens, put back in their places
            h_masked = cross_entropy(teacher.part[masked[valid]], student.part, self.centers.part, tt, ts)
            h = torch.zeros(masked.shape, dtype=h_masked.dtype, device=masked.device).masked_scatter(masked, h_masked)
        u, v = slice(0, B), slice(B, 2 * B)
        l_part = 0.5 * (part_loss(h[u], masked[u], cfg.part_norm, comm.share)
                        + part_loss(h[v], masked[v], cfg.part_norm, comm.share))
        l_koleo = koleo(comm.gather(student.backbone[:B].float()))  # nearest neighbours among the whole global batch
        zero = torch.zeros((), device=masked.device)
        total = (l_part if cfg.use_part_loss else zero) + (l_cls if cfg.use_cls_loss else zero)
        total = total + cfg.koleo_weight * l_koleo
        return torch.stack([total, l_part.detach(), l_cls.detach(), l_koleo.detach()])

    @torch.no_grad()
    def monitors(self, teacher: TeacherOutputs, student: StudentOutputs) -> torch.Tensor:
        """The collapse monitors (docs/method.md §5.7; ``TERMS[len(LOSS_TERMS):]``): the teacher's entropy against
        the centre as it is now (the step calls this after updating the centres), the student's, and the masked
        fraction of the valid particles (over all ranks)."""
        comm = self.comm
        return torch.stack([
            entropy(teacher.cls, self.cfg.teacher_temp, self.centers.cls), entropy(student.cls, self.cfg.student_temp),
            comm.sum(student.masked.float().sum()) / comm.sum(teacher.valid.float().sum()).clamp_min(1),
        ])
