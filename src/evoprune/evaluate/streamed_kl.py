"""KL to the teacher of a sliced model that never exists whole: its layers are built and run one at a time.

The fitness blocks' hidden states (a few MB even for an 8B model) go through the sliced layers in
order; each layer is sliced from the dense weights (plus the database's replacements), run on
every batch, and released. The dense model's own final norm and LM head finish the job, over a
bounded number of positions at a time, so the full-vocabulary logits of a batch never exist
either. The result equals `kl_to_teacher(adapter.slice(dense, spec, replace), ...)` to float
rounding (tested), without ever copying the embeddings, the LM head or a second layer.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.spec import SubnetSpec
from ..errors import UserError
from ..modes import eval_mode
from ..prune.layerwise import capture_first_layer_inputs
from ..weights.compute_dtype import cast_floats, compute_dtype_of, weights_in
from .teacher import TeacherCache, check_kl_inputs, kl_per_position

LOGITS_CHUNK_BYTES = 128 * 2**20  # fp32 logits computed at once per chunk of positions


@torch.inference_mode()
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
    with eval_mode(dense):
        inputs = capture_first_layer_inputs(dense, adapter, blocks, batch_size)
        hidden = [h.to(dtype) for h in inputs.hidden]
        kwargs = [{name: cast_floats(v, dtype) for name, v in k.items()} for k in inputs.kwargs]
        for layer in adapter.sliced_layers(dense, spec, replace, dtype):
            hidden = [_output(layer(h, **k)) for h, k in zip(hidden, kwargs)]
            del layer
        norm, head = adapter.final_norm(dense), dense.get_output_embeddings()
        block_sums = torch.zeros(len(blocks), dtype=torch.float64)
        start = 0
        with weights_in(norm, dtype), weights_in(head, dtype):  # converted once, not once per chunk
            for h in hidden:
                block_sums[start:start + len(h)] = _head_kl_sums(norm(h), head, cache, start)
                start += len(h)
    per_block_kl = block_sums / cache.positions
    return per_block_kl if per_block else float(per_block_kl.mean())


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _head_kl_sums(h: torch.Tensor, head: torch.nn.Module, cache: TeacherCache, start: int) -> torch.Tensor:
    """Per block of `h` ([b, seq, hidden], after the final norm): the summed KL over its next-token positions."""
    b, positions = h.shape[0], cache.positions
    if head.weight.shape[0] != cache.vocab_size:
        raise UserError(f"the model predicts {head.weight.shape[0]} tokens but the teacher in {cache.path} "
                        f"predicts {cache.vocab_size}; KL needs the same tokenizer and vocabulary")
    teacher = cache.read(start, start + b)
    chunk = max(1, LOGITS_CHUNK_BYTES // (4 * cache.vocab_size * b))
    sums = torch.zeros(b, dtype=torch.float64)
    for p in range(0, positions, chunk):
        q = min(positions, p + chunk)
        logprobs = torch.log_softmax(head(h[:, p:q]).float(), dim=-1)
        part = type(teacher)(teacher.logprobs[:, p:q],
                             None if teacher.token_ids is None else teacher.token_ids[:, p:q],
                             None if teacher.rest_logprob is None else teacher.rest_logprob[:, p:q])
        sums += kl_per_position(part.to(logprobs.device), logprobs).double().sum(dim=-1).cpu()
    return sums
