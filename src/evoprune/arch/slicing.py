"""Family-independent helpers for building a physically smaller model from index lists."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

Index = torch.Tensor | None  # LongTensor of kept positions, or None for "keep all"


def head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """Row indices of q/k/v projections (or column indices of o_proj) for the kept heads."""
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    return (torch.tensor(heads)[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def take(tensor: torch.Tensor, rows: Index, cols: Index = None) -> torch.Tensor:
    """tensor[rows][:, cols], copying (never a view of the source)."""
    out = tensor if rows is None else tensor.index_select(0, rows.to(tensor.device))
    if cols is not None:
        out = out.index_select(1, cols.to(tensor.device))
    return out.clone() if out is tensor else out.contiguous()


def instantiate(model_class: type[PreTrainedModel], config: PretrainedConfig,
                state_dict: dict[str, torch.Tensor]) -> PreTrainedModel:
    """Build `model_class(config)` without random init and fill it with `state_dict`.

    The model is created on the meta device and the tensors are assigned, so nothing is
    allocated twice. Non-persistent buffers (RoPE frequencies) are rebuilt on the real device.
    """
    with torch.device("meta"):
        model = model_class(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    tied = set(_tied_keys(model))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"slicing produced a wrong state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tied:
        model.tie_weights()
    device = next(iter(state_dict.values())).device
    _rebuild_meta_buffers(model, config, device)
    model.eval()
    return model


def _tied_keys(model: PreTrainedModel) -> list[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    if not getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        return []
    return list(keys) if isinstance(keys, (dict, list, tuple)) else []


def _rebuild_meta_buffers(model: nn.Module, config: PretrainedConfig, device: torch.device) -> None:
    for name, module in model.named_modules():
        if any(b.is_meta for b in module.buffers(recurse=False)):
            if hasattr(module, "scalar_embed_scale"):  # Gemma's scaled embedding keeps its scale as a buffer
                module.embed_scale = torch.tensor(module.scalar_embed_scale, device=device)
                continue
            if "config" not in type(module).__init__.__code__.co_varnames:
                raise RuntimeError(f"cannot rebuild buffers of {name} ({type(module).__name__})")
            fresh = type(module)(config=getattr(module, "config", config)).to(device)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, fresh)
