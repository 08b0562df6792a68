"""Perplexity and KL to the teacher from one forward pass over the held-out blocks, with their intervals.

`mean_nll` and `kl_to_teacher` each run the model over the blocks; a run's evaluation needs both on the
same blocks, so this computes both from the same logits (half the forward passes). The figures are
per block as well, which gives the interval a reader needs to tell a difference from noise: blocks are
the sampling unit (tokens inside a block are not independent), and the 95% interval of the mean is
mean ± t·s/√n over the blocks' means, with Student's t for n − 1 degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from .blocks import batches, check_vocab, eval_mode, model_device, next_token_logprob_chunks
from .teacher import TeacherCache, check_kl_inputs, check_same_vocab, kl_per_position

def interval95(per_block: torch.Tensor) -> tuple[float, float]:
    """The 95% interval of the mean of `per_block` (blocks as independent samples); a point for one block."""
    values = per_block.double()
    mean = float(values.mean())
    n = len(values)
    if n < 2:
        return mean, mean
    half = float(stats.t.ppf(0.975, n - 1)) * float(values.std()) / math.sqrt(n)
    return mean - half, mean + half


def perplexity_interval(per_block_nll: torch.Tensor) -> list[float]:
    """[low, high] of the perplexity: exp of the mean NLL's 95% interval."""
    low, high = interval95(per_block_nll)
    return [math.exp(low), math.exp(high)]


@dataclass
class HeldoutFigures:
    per_block_nll: torch.Tensor  # float64 [n_blocks]: mean next-token NLL of each block, nats
    per_block_kl: torch.Tensor  # float64 [n_blocks]: mean KL(teacher || model) of each block, nats

    def row(self) -> dict:
        """A model's row fields: eval_nll, perplexity (with its 95% interval) and kl_to_teacher (with its own)."""
        nll = float(self.per_block_nll.mean())
        return {"eval_nll": nll, "perplexity": math.exp(nll), "perplexity_ci95": perplexity_interval(self.per_block_nll),
                "kl_to_teacher": float(self.per_block_kl.mean()), "kl_ci95": list(interval95(self.per_block_kl))}


def heldout_figures(model: nn.Module, blocks: torch.Tensor, teacher: TeacherCache, batch_size: int = 4,
                    progress: bool = False) -> HeldoutFigures:
    """Per-block NLL and KL to `teacher` of `model` on `blocks` (the teacher's own blocks), one forward pass each.

    The NLL is the same figure as `mean_nll` and the KL as `kl_to_teacher`, to float rounding.
    """
    blocks = check_kl_inputs(blocks, batch_size, teacher)
    check_vocab(model, blocks)
    device = model_device(model)
    nll = torch.zeros(len(blocks), dtype=torch.float64)
    kl = torch.zeros(len(blocks), dtype=torch.float64)
    positions = blocks.shape[1] - 1
    with eval_mode(model), torch.inference_mode():
        for start, batch in batches(blocks, batch_size, device, progress, desc="held-out"):
            token_nll = torch.empty(len(batch), positions)
            kl_rows = torch.empty(len(batch), positions)
            rows = teacher.read(start, start + len(batch)).to(device)
            for p, q, logprobs in next_token_logprob_chunks(model, batch):  # [batch, q - p, vocab]
                check_same_vocab(logprobs, teacher)
                token_nll[:, p:q] = F.nll_loss(logprobs.transpose(1, 2), batch[:, p + 1:q + 1], reduction="none").cpu()
                kl_rows[:, p:q] = kl_per_position(rows.positions(p, q), logprobs).cpu()  # overwrites logprobs
            nll[start:start + len(batch)] = token_nll.double().sum(dim=-1) / positions
            kl[start:start + len(batch)] = kl_rows.double().sum(dim=-1) / teacher.positions
    return HeldoutFigures(nll, kl)
