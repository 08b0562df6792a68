"""A pruning target, as the number of transformer-block parameters to keep."""

from __future__ import annotations

from dataclasses import dataclass

from . import params
from .shape import ModelShape
from ..errors import UserError


@dataclass(frozen=True)
class Target:
    block_params: int  # transformer-block parameters to keep
    description: str  # what the user asked for, for reports

    def report(self, achieved_block_params: int, dense_block_params: int) -> dict:
        return {
            "requested": self.description,
            "target_block_params": self.block_params,
            "achieved_block_params": achieved_block_params,
            "target_sparsity": round(1 - self.block_params / dense_block_params, 6),
            "achieved_sparsity": round(1 - achieved_block_params / dense_block_params, 6),
            "relative_error": round((achieved_block_params - self.block_params) / dense_block_params, 6),
        }

    def total_params(self, shape: ModelShape) -> int:
        """The total parameters of a model of `shape` pruned to this target (embeddings and LM head kept whole)."""
        return self.block_params + params.embedding_params(shape)

    def sparsity(self, shape: ModelShape) -> float:
        """The fraction of the block parameters of `shape` this target removes."""
        return 1.0 - self.block_params / params.block_params(shape)


def total_at_sparsity(shape: ModelShape, sparsity: float) -> int:
    """Total parameters left when `sparsity` (any value in [0, 1]) of the block parameters is removed."""
    return params.embedding_params(shape) + _kept_blocks(shape, sparsity)


def sparsity_at_total(shape: ModelShape, total: float) -> float:
    """The sparsity whose removal leaves `total` parameters (the inverse of `total_at_sparsity`; may leave [0, 1])."""
    return 1.0 - (total - params.embedding_params(shape)) / params.block_params(shape)


def _kept_blocks(shape: ModelShape, sparsity: float) -> int:
    return round(params.block_params(shape) * (1.0 - sparsity))


def resolve_target(shape: ModelShape, sparsity: float | None = None, target_params: int | None = None) -> Target:
    """Turn `--sparsity S` (fraction of block parameters removed) or `--target-params N` (total) into a Target.

    Raises:
        UserError: when neither or both are given, or the value is impossible for this model.
    """
    if (sparsity is None) == (target_params is None):
        raise UserError("give exactly one of --sparsity or --target-params")
    if sparsity is not None:
        if not 0.0 < sparsity < 1.0:
            raise UserError(f"sparsity must be strictly between 0 and 1 (fraction of block parameters removed), got {sparsity}")
        return Target(_kept_blocks(shape, sparsity), f"sparsity {sparsity:g}")
    total = params.total_params(shape)
    fixed = params.embedding_params(shape)
    if target_params >= total:
        raise UserError(f"target of {target_params:,} parameters is not smaller than the model ({total:,})")
    if target_params <= fixed:
        raise UserError(
            f"target of {target_params:,} parameters is below the embeddings and LM head alone ({fixed:,}); "
            f"choose between {fixed:,} and {total:,}"
        )
    return Target(target_params - fixed, f"target params {target_params:,}")


def unreachable(target: Target, lowest: int, highest: int, dense_blocks: int, method: str) -> UserError:
    return UserError(
        f"{target.description} is out of reach for --method {method}: it can keep between {lowest:,} and "
        f"{highest:,} block parameters (sparsity {1 - highest / dense_blocks:.3f} to {1 - lowest / dense_blocks:.3f}), "
        f"the target keeps {target.block_params:,}"
    )
