"""Fixed parameter masks: entries that are zero and must stay exactly zero through training."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import UserError


class ParamMasks:
    """Validated {parameter name: keep-mask} of one model, ready to apply to weights and grads.

    A mask has the parameter's shape and is bool or holds only 0 / 1 (1 = keep). Names are those
    of `model.named_parameters()` (either name of a tied parameter works; masks given for two
    names of the same tensor are combined with AND).

    Masked entries are zeroed by `apply_()`; `mask_grads_()` zeroes their gradients before
    clipping (so they don't count in the grad norm) and the optimizer step, and `apply_()` after
    the step puts them back to exactly +0.0 whatever the optimizer did. With zero grads AdamW's
    moments for those entries stay 0, so the re-application is a guarantee, not a correction.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        named = dict(model.named_parameters(remove_duplicate=False))
        problems: list[str] = []
        by_param: dict[int, tuple[str, nn.Parameter, torch.Tensor]] = {}
        for name, mask in masks.items():
            param = named.get(name)
            if param is None:
                problems.append(f"{name}: no such parameter")
                continue
            if not isinstance(mask, torch.Tensor):
                problems.append(f"{name}: mask must be a tensor, got {type(mask).__name__}")
                continue
            if tuple(mask.shape) != tuple(param.shape):
                problems.append(f"{name}: mask shape {list(mask.shape)} != parameter shape {list(param.shape)}")
                continue
            if mask.dtype != torch.bool:
                if not bool(((mask == 0) | (mask == 1)).all()):
                    problems.append(f"{name}: mask values must be 0 / 1 (or bool)")
                    continue
                mask = mask != 0
            keep = mask.to(param.device)
            if id(param) in by_param:
                first, _, other = by_param[id(param)]
                keep = keep & other
                name = first
            by_param[id(param)] = (name, param, keep)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise UserError("invalid masks: " + "; ".join(problems[:5]) + more)
        self.entries = [(name, param, ~keep) for name, param, keep in by_param.values()]

    def __len__(self) -> int:
        return len(self.entries)

    @torch.no_grad()
    def apply_(self) -> None:
        """Set every masked weight entry to 0."""
        for _, param, drop in self.entries:
            param.masked_fill_(drop, 0.0)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Set the gradient of every masked entry to 0 (parameters without a grad are skipped)."""
        for _, param, drop in self.entries:
            if param.grad is not None:
                param.grad.masked_fill_(drop, 0.0)

    def masked_counts(self) -> dict[str, int]:
        """Masked (zero) entries per parameter name."""
        return {name: int(drop.sum()) for name, _, drop in self.entries}
