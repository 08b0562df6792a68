"""Train a model in place on consecutive token blocks for a token budget.

Token accounting (exact): a micro-batch is `batch_size` consecutive blocks, i.e.
m = batch_size * seq_len tokens (every token of a block counts, including the first, which is only
context). A budget of `tokens` runs floor(tokens / m) micro-batches, grouped into optimizer steps of
`grad_accum` micro-batches; the last step holds the remainder (1 .. grad_accum micro-batches, its
loss still a mean over what it holds). So

    tokens_seen = floor(tokens / m) * m,   tokens - m < tokens_seen <= tokens,
    steps = ceil(floor(tokens / m) / grad_accum),

i.e. the budget is never exceeded and at most one micro-batch's worth is left unused. A budget of 0
trains nothing (no step, weights untouched); 0 < tokens < m is a UserError.

Blocks are taken cyclically from `start_block` (reduced modulo n_blocks): micro-batch k holds blocks
(start_block + k * batch_size + j) mod n_blocks for j < batch_size, and
next_block = (start_block + tokens_seen / seq_len) mod n_blocks, so a caller that passes
next_block as the next start_block walks through its data without repeats until it wraps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..evaluation.blocks import check_blocks, check_vocab, eval_mode
from .batches import micro_batches
from .cached_teacher import CachedTeacher
from .config import TrainConfig
from .masks import ParamMasks
from .optim import build_optimizer, build_scheduler
from .step import train_mode, train_step

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of `train_on_blocks`."""

    steps: int  # optimizer steps taken
    tokens_seen: int  # tokens in the blocks trained on (micro-batches * batch_size * seq_len)
    next_block: int  # where the next run should start to continue through the blocks
    losses: list[float] = field(default_factory=list)  # per step: mean objective over its micro-batches
    seconds: float = 0.0  # wall time of the training loop


@dataclass(frozen=True)
class TokenPlan:
    """How a token budget maps onto micro-batches and optimizer steps (see the module docstring)."""

    micro_batches: int
    steps: int
    grad_accum: int
    micro_tokens: int

    @property
    def tokens(self) -> int:
        return self.micro_batches * self.micro_tokens

    def micro_batches_in_step(self, step: int) -> int:
        return min(self.grad_accum, self.micro_batches - step * self.grad_accum)


def plan_tokens(tokens: int, seq_len: int, cfg: TrainConfig) -> TokenPlan:
    """The micro-batches and steps that spend at most `tokens` tokens of seq_len-long blocks.

    Raises:
        UserError: if `tokens` is negative, not an integer, or positive but below one micro-batch.
    """
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise UserError(f"training token budget must be an integer >= 0, got {tokens!r}")
    micro_tokens = cfg.batch_size * seq_len
    if 0 < tokens < micro_tokens:
        raise UserError(f"training token budget {tokens} is smaller than one micro-batch of {micro_tokens} tokens "
                        f"(batch_size {cfg.batch_size} x seq_len {seq_len}); raise the budget or lower the batch "
                        "size or block length")
    micro = tokens // micro_tokens
    return TokenPlan(micro, math.ceil(micro / cfg.grad_accum), cfg.grad_accum, micro_tokens)


def train_on_blocks(model: nn.Module, blocks: torch.Tensor, tokens: int, cfg: TrainConfig, start_block: int = 0,
                    teacher: nn.Module | CachedTeacher | None = None, masks: Mapping[str, torch.Tensor] | None = None,
                    progress: bool = False) -> TrainResult:
    """Train `model` in place with AdamW on `tokens` tokens of `blocks`, cyclically from `start_block`.

    Args:
        model: a causal LM (dense or physically sliced); only `model(input_ids=..., use_cache=False).logits`
            is used. Put in train mode during the run, its previous mode restored afterwards.
        blocks: token ids [n_blocks, seq_len].
        tokens: token budget; see the module docstring for the exact accounting.
        cfg: hyper-parameters; a fresh optimizer and schedule (over exactly the planned steps) per call.
        start_block: index of the first block (>= 0, taken modulo n_blocks: the blocks are a cycle).
        teacher: for cfg.loss "kd" / "lm+kd": a model with the same vocabulary (kept in eval mode, no grad),
            or a CachedTeacher built for `blocks` (the teacher's distribution read from disk).
        masks: {parameter name: keep-mask of its shape} (bool or 0/1). Masked entries are zeroed first
            and are exactly 0 after every step (see ParamMasks).
        progress: show a tqdm bar over steps.

    Returns:
        TrainResult(steps, tokens_seen, next_block, per-step losses, seconds).

    Deterministic: torch.manual_seed(cfg.seed) is called first and nothing else is random, so the same
    weights, blocks and config give bitwise the same weights on CPU.

    Raises:
        UserError: bad blocks / budget / start_block / masks, a teacher missing for (or given without)
            a distillation loss, a teacher with a different vocabulary, or a cached teacher for other blocks.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    blocks = check_blocks(blocks)
    check_vocab(model, blocks)
    n_blocks, seq_len = blocks.shape
    if not isinstance(start_block, int) or isinstance(start_block, bool) or start_block < 0:
        raise UserError(f"start_block must be an integer >= 0, got {start_block!r}")
    start_block %= n_blocks
    if cfg.uses_teacher and teacher is None:
        raise UserError(f"loss {cfg.loss!r} needs a teacher model; pass teacher= or use loss 'lm'")
    if teacher is not None and not cfg.uses_teacher:
        raise UserError("a teacher was given but the loss is 'lm'; use loss 'kd' or 'lm+kd' to distil from it")
    if isinstance(teacher, CachedTeacher):
        teacher.check_covers(blocks)
    elif teacher is not None:
        check_vocab(teacher, blocks)
    plan = plan_tokens(tokens, seq_len, cfg)
    if plan.steps == 0:
        return TrainResult(0, 0, start_block, [], 0.0)

    torch.manual_seed(cfg.seed)
    param_masks = ParamMasks(model, masks) if masks else None
    if param_masks is not None:
        param_masks.apply_()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, plan.steps)
    cursor = start_block
    losses: list[float] = []
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(train_mode(model))
        if isinstance(teacher, nn.Module):
            stack.enter_context(eval_mode(teacher))
        bar = stack.enter_context(tqdm(total=plan.steps, desc="train", unit="step", disable=not progress))
        for step in range(plan.steps):
            micro, cursor = micro_batches(blocks, cursor, cfg.batch_size, plan.micro_batches_in_step(step))
            result = train_step(model, micro, optimizer, cfg, scheduler, teacher, param_masks)
            losses.append(result.loss)
            log.debug("step %d/%d loss %.5f lr %.3g grad_norm %s", step + 1, plan.steps, result.loss, result.lr,
                      result.grad_norm)
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.4f}")
    seconds = time.perf_counter() - start
    log.debug("trained %d steps on %d tokens in %.1f s (loss %.4f -> %.4f)", plan.steps, plan.tokens, seconds,
             losses[0], losses[-1])
    return TrainResult(plan.steps, plan.tokens, cursor, losses, seconds)
