"""Some blocks of a teacher cache, read as if they were a cache of their own (no copy on disk)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .blocks import check_blocks
from .teacher import TeacherCache, TeacherSlice


class TeacherSubset:
    """The teacher distribution of `blocks[indices]`, for `kl_to_teacher` and the distillation losses.

    Args:
        cache: the teacher cache of all of `blocks`.
        blocks: the blocks `cache` was built from, [n_blocks, seq_len].
        indices: which blocks, in order (repeats allowed).

    Raises:
        UserError: if `blocks` are not the cache's blocks or an index is out of range.
    """

    def __init__(self, cache: TeacherCache, blocks: torch.Tensor, indices: list[int]):
        cache.check_blocks(blocks)
        if not indices or min(indices) < 0 or max(indices) >= cache.n_blocks:
            raise UserError(f"block indices must lie in [0, {cache.n_blocks}), got {indices}")
        self.cache, self.indices = cache, list(indices)
        self.blocks = check_blocks(blocks)[self.indices]
        self.path: Path = cache.path
        self.vocab_size, self.seq_len, self.top_k = cache.vocab_size, cache.seq_len, cache.top_k
        self.temperature = cache.temperature
        self.n_blocks = len(self.indices)
        self.teacher_id = cache.teacher_id

    @property
    def positions(self) -> int:
        return self.cache.positions

    def teacher_nll(self) -> torch.Tensor | None:
        nll = self.cache.teacher_nll()
        return None if nll is None else nll[self.indices]

    def check_blocks(self, blocks: torch.Tensor) -> None:
        blocks = check_blocks(blocks)
        if blocks.shape != self.blocks.shape or not torch.equal(blocks, self.blocks):
            raise UserError(f"these blocks are not blocks {self.indices} of the teacher cache {self.path}")

    def read(self, start: int, stop: int) -> TeacherSlice:
        """Teacher log-probs of the subset's blocks [start, stop), one contiguous read per run of indices."""
        parts, wanted = [], self.indices[start:stop]
        run_start = 0
        for i in range(1, len(wanted) + 1):
            if i == len(wanted) or wanted[i] != wanted[i - 1] + 1:
                parts.append(self.cache.read(wanted[run_start], wanted[i - 1] + 1))
                run_start = i
        return TeacherSlice(torch.cat([p.logprobs for p in parts]), _cat([p.token_ids for p in parts]),
                            _cat([p.rest_logprob for p in parts]))


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)
