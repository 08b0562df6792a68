"""The final-normed hidden states of a forward pass, without running the LM head.

A causal LM's forward ends with logits over the whole vocabulary at every position: for a 128k
vocabulary, a batch of 4 x 512 tokens is 1 GiB of fp32 logits, more than the rest of the pass. Code
that needs only the layers' activations (calibration statistics) stops the pass after the final norm;
code that needs log-probabilities (perplexity, KL, teacher caches) applies the head to a bounded
chunk of positions at a time (`evaluation.blocks.next_token_logprob_chunks`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from ..arch.adapter import adapter_for
from ..errors import UserError


class _Stopped(Exception):
    pass


def final_norm_of(model: nn.Module) -> nn.Module | None:
    """`model`'s final norm where its family's adapter finds it; None for a model of no supported family or laid
    out otherwise (a LoRA-wrapped model)."""
    try:
        return adapter_for(model.config).final_norm(model)
    except (UserError, AttributeError):
        return None


def final_hidden(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor | None:
    """The output of `model`'s final norm, [batch, seq_len, hidden], for `input_ids`; the LM head never runs.

    None, and nothing run, when the norm is not found (`final_norm_of`).
    """
    norm = final_norm_of(model)
    if norm is None:
        return None
    captured: list[torch.Tensor] = []

    def stop(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stopped

    # registered last, so hooks already on the norm (compute_in restoring its stored weights) run first
    handle = norm.register_forward_hook(stop)
    try:
        model(input_ids=input_ids, use_cache=False)
    except _Stopped:
        pass
    finally:
        handle.remove()
    return captured[0]
