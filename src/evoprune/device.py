"""The device a process runs on, chosen in one place: `--device`, torchrun's ranks and the GPUs it can see.

Every command places its model through `choose_device` (`models.load_model`, `models.check_device`,
`recovery.accelerator`), and a torchrun job pins each process to its GPU with `distributed_backend`
before it opens the process group. torchrun sets RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE
for every process it starts; without it a process is rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import UserError


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun job (rank 0 of 1 when started alone)."""

    rank: int = 0
    local_rank: int = 0  # the process's index on its machine: the GPU it should use
    world_size: int = 1
    local_world_size: int = 1  # processes on this machine


def torchrun_launch(env: Mapping[str, str] = os.environ) -> Launch:
    """The Launch that torchrun's environment variables describe."""
    values = {}
    for field, name, default in (("rank", "RANK", 0), ("local_rank", "LOCAL_RANK", 0), ("world_size", "WORLD_SIZE", 1),
                                 ("local_world_size", "LOCAL_WORLD_SIZE", None)):
        text = env.get(name)
        try:
            values[field] = default if text is None else int(text)
        except ValueError:
            raise UserError(f"environment variable {name}={text!r} is not a whole number; it is torchrun's to set, "
                            "unset it or launch with torchrun") from None
    if values["local_world_size"] is None:
        values["local_world_size"] = values["world_size"]
    return Launch(**values)


def visible_cuda_count(env: Mapping[str, str] = os.environ, cuda_count: int | None = None) -> int:
    """The CUDA GPUs this process may use: `cuda_count` (default: torch's count) limited by CUDA_VISIBLE_DEVICES.

    CUDA reads the list up to its first invalid entry, so "" and "-1" hide every GPU.
    """
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return cuda_count
    listed = 0
    for entry in visible.split(","):
        if not entry.strip() or entry.strip().startswith("-"):
            break
        listed += 1
    return min(cuda_count, listed)


def _no_gpu(env: Mapping[str, str]) -> str:
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return f"this process sees no CUDA GPU (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r})"
    return "this machine has no CUDA GPU" + (" (this PyTorch is built without CUDA)" if torch.version.cuda is None
                                             else "")


def choose_device(requested: str | None = None, env: Mapping[str, str] = os.environ,
                  cuda_count: int | None = None) -> torch.device:
    """The device to run on, or a one-line UserError when this process cannot have it.

    Args:
        requested: `--device` (model.device): cpu (also None, the default) | cuda | cuda:N | mps. A bare
            `cuda` means the GPU of this process's torchrun local rank (cuda:0 without torchrun); an
            explicit `cuda:N` is taken as given.
        env: the environment to read torchrun's LOCAL_RANK and CUDA_VISIBLE_DEVICES from.
        cuda_count: CUDA GPUs on the machine (default: torch's count), before CUDA_VISIBLE_DEVICES.
    """
    from .config import device_problems

    requested = "cpu" if requested is None else str(requested)
    problems = device_problems(requested)
    if problems:
        raise UserError(problems[0])
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device mps is not available on this machine; use --device cpu")
        return torch.device("mps")
    count = visible_cuda_count(env, cuda_count)
    if count == 0:
        raise UserError(f"device {requested} is not available: {_no_gpu(env)}; use --device cpu")
    launch = torchrun_launch(env)
    index = int(requested.partition(":")[2]) if ":" in requested else launch.local_rank
    if index >= count:
        seen = f"{count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
        if ":" in requested:
            raise UserError(f"device {requested} is not available: this process sees {seen}; use --device cpu "
                            "or one of those")
        raise UserError(f"torchrun local rank {index} has no GPU of its own: this process sees {seen}; start at "
                        f"most {count} processes per machine (--nproc_per_node {count})")
    return torch.device("cuda", index)


def distributed_backend(env: Mapping[str, str] = os.environ,
                        cuda_count: int | None = None) -> tuple[str, torch.device | None]:
    """The torch.distributed backend of this process, and the GPU it must select before joining the group.

    NCCL when every process on this machine has a GPU of its own (`cuda:LOCAL_RANK`), gloo otherwise
    (CPU-only machines, CUDA_VISIBLE_DEVICES="", more processes than GPUs).
    """
    launch = torchrun_launch(env)
    if 0 < launch.local_world_size <= visible_cuda_count(env, cuda_count):
        return "nccl", choose_device("cuda", env, cuda_count)
    return "gloo", None


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` before reading a clock (GPUs run asynchronously; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
