"""Which token blocks each process trains on, so that any number of processes walks the same data.

A global micro-batch is `global_batch` consecutive blocks of the train split, taken cyclically from
a cursor (as in `train_on_blocks`); process r of W takes the r-th of W equal, contiguous shares.
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


def rank_micro_batches(blocks: torch.Tensor, cursor: int, global_batch: int, count: int, rank: int,
                       world_size: int) -> tuple[list[torch.Tensor], int]:
    """This process's share of `count` global micro-batches from block `cursor`, and the next cursor."""
    n_blocks = blocks.shape[0]
    share = per_process_batch(global_batch, world_size)
    offsets = torch.arange(rank * share, (rank + 1) * share)
    micro = []
    for _ in range(count):
        micro.append(blocks[(cursor + offsets) % n_blocks])
        cursor = (cursor + global_batch) % n_blocks
    return micro, cursor
