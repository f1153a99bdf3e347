"""Data-parallel pre-training under ``torchrun`` (PyTorch DDP): joining and leaving the process group.

``setup`` gives this process its ``Comm`` (``jbot.comm``: its rank, the world size and the collectives the losses
use) and its device; one process (no ``WORLD_SIZE`` in the environment, or 1) gets ``SINGLE``, whose collectives
are identities.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from jbot.comm import SINGLE, Comm
from jbot.config import RuntimeConfig
from jbot.launch import world_from_env
from jbot.train.device import runtime_device

__all__ = ["SINGLE", "Comm", "setup", "teardown"]


def setup(runtime: RuntimeConfig) -> tuple[Comm, torch.device]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) and pick this rank's device."""
    rank, world, local = world_from_env()
    device = runtime_device(runtime)
    if world <= 1:
        return SINGLE, device
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Comm(rank, world), device


def teardown(comm: Comm) -> None:
    if comm.active and dist.is_initialized():
        dist.destroy_process_group()
