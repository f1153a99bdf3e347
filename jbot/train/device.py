"""Device and precision choices from the config's ``runtime`` section (fast path on CUDA: bf16 autocast +
torch.compile unless disabled); every command gets its device from ``runtime_device``."""

from __future__ import annotations

import contextlib

import torch

from jbot.config import ConfigError, RuntimeConfig


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def runtime_device(runtime: RuntimeConfig) -> torch.device:
    """The device to compute on; sets torch's CPU thread count when ``runtime.threads`` is given."""
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)
    return pick_device(runtime.device)


def autocast(device: torch.device, precision: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked (auto: on CUDA); ``cache=False`` inside a CUDA graph (cached casts would be
    the graph's stale copies)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def use_compile(device: torch.device, setting: str) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def use_cuda_graphs(device: torch.device, setting: str, world: int = 1) -> bool:
    """CUDA graphs of the pre-training step: auto = on CUDA in one process; on elsewhere is an error."""
    if setting == "off":
        return False
    possible = device.type == "cuda" and world == 1
    if setting == "on" and not possible:
        raise ConfigError("runtime.cuda_graphs=on needs a CUDA device and one process (got "
                          f"{device.type}, {world} processes); use auto or off")
    return possible
