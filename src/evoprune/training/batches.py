"""Which token blocks a training step takes: the one data walk of every training loop in evoprune.

A global micro-batch is `global_batch` consecutive blocks, taken cyclically from a cursor (the blocks
are a cycle, so a run continues through its data without repeats until it wraps); process r of W
takes the r-th of W equal, contiguous shares (one process: all of it).
With DDP averaging gradients over processes, a step then minimises the same mean loss over the
same blocks whatever W is.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def per_process_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise UserError(f"train.batch_size={global_batch} blocks cannot be split evenly over {world_size} processes; "
                        f"use a multiple of {world_size}")
    return global_batch // world_size


def micro_batches(blocks: torch.Tensor, cursor: int, global_batch: int, count: int = 1, rank: int = 0,
                  world_size: int = 1) -> tuple[list[torch.Tensor], int]:
    """This process's share of `count` global micro-batches from block `cursor`, and the next cursor."""
    n_blocks = blocks.shape[0]
    share = per_process_batch(global_batch, world_size)
    offsets = torch.arange(rank * share, (rank + 1) * share)
    micro = []
    for _ in range(count):
        micro.append(blocks[(cursor + offsets) % n_blocks])
        cursor = (cursor + global_batch) % n_blocks
    return micro, cursor
