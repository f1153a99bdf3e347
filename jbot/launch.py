"""Which process of a ``torchrun`` job this is, read from the environment torchrun sets (torch-free: the CLI asks
before anything heavy is imported)."""

from __future__ import annotations

import os

from jbot.config import ConfigError


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers ({exc})") from None
    return rank, world, local
