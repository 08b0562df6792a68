"""KL to the teacher of a sliced model that never exists whole: its layers are built and run one at a time.

The fitness blocks go through the sliced layers in order (`streamed_layers.stream_blocks`); each
layer is sliced from the dense weights (plus the database's replacements), run on every batch, and
released. The dense model's own final norm and LM head finish the job, over a bounded number of
positions at a time, so the full-vocabulary logits of a batch never exist either. The result equals
`kl_to_teacher(adapter.slice(dense, spec, replace), ...)` to float rounding (tested), without ever
copying the embeddings, the LM head or a second layer.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.spec import SubnetSpec
from ..errors import UserError
from ..weights.compute_dtype import compute_dtype_of
from .streamed_layers import logprob_chunks, sliced_layers, stream_blocks
from .teacher import TeacherCache, TeacherSlice, check_kl_inputs, kl_per_position


def streamed_kl(dense: PreTrainedModel, adapter: ModelAdapter, spec: SubnetSpec, replace: dict[str, torch.Tensor],
                blocks: torch.Tensor, cache: TeacherCache, batch_size: int = 4,
                compute_dtype: torch.dtype | None = None, per_block: bool = False) -> float | torch.Tensor:
    """Mean per-token KL(teacher ‖ sliced model) over the next-token positions of `blocks`, layer by layer.

    Args:
        dense: the source model (its weights may be memory-mapped; they are only read).
        adapter: the dense model's adapter.
        spec: what the sliced model keeps (the hidden size must be kept).
        replace: source parameter name -> tensor in the sliced shape (the database's updated projections).
        blocks: token ids [n_blocks, seq_len], the blocks `cache` was built from.
        cache: the teacher at temperature 1 (or a `TeacherSubset`).
        batch_size: blocks per layer call.
        compute_dtype: dtype the sliced layers run in (default: the dense model's).
        per_block: return each block's mean KL (float64 [n_blocks]) instead of the mean.
    """
    blocks = check_kl_inputs(blocks, batch_size, cache)
    dtype = compute_dtype or compute_dtype_of(dense)

    def head_kl_sums(start: int, hidden: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """Per block of `hidden` ([b, seq, hidden], after the final norm): the summed KL over its positions."""
        if head.weight.shape[0] != cache.vocab_size:
            raise UserError(f"the model predicts {head.weight.shape[0]} tokens but the teacher in {cache.path} "
                            f"predicts {cache.vocab_size}; KL needs the same tokenizer and vocabulary")
        teacher = cache.read(start, start + len(hidden))
        sums = torch.zeros(len(hidden), dtype=torch.float64)
        for p, q, logprobs in logprob_chunks(hidden, head, cache.positions):
            part = TeacherSlice(teacher.logprobs[:, p:q],
                                None if teacher.token_ids is None else teacher.token_ids[:, p:q],
                                None if teacher.rest_logprob is None else teacher.rest_logprob[:, p:q])
            sums += kl_per_position(part.to(logprobs.device), logprobs).double().sum(dim=-1).cpu()
        return sums

    layers = sliced_layers(dense, adapter, spec, replace, dtype)
    block_sums = stream_blocks(dense, adapter, blocks, batch_size, head_kl_sums, layers, dtype)
    per_block_kl = block_sums / cache.positions
    return per_block_kl if per_block else float(per_block_kl.mean())
