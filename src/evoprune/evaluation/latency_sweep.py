"""Latency over a grid of workloads (batch sizes x prompt lengths), all models side by side.

Each workload is one `compare_latency` run over every model (interleaved repeat by repeat), so
the speed ratios at a workload are measured under the same machine conditions. Workloads run
from the smallest to the largest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from ..errors import UserError
from .latency import LatencyResult, _check_workload, compare_latency

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workload:
    batch_size: int
    prompt_len: int

    @property
    def label(self) -> str:
        return f"b{self.batch_size} p{self.prompt_len}"


def sweep_grid(batch_sizes: list[int], prompt_lens: list[int]) -> list[Workload]:
    """Every (batch size, prompt length) pair, duplicates dropped, smallest workloads first.

    Raises:
        UserError: an empty list or a value that is not a positive integer.
    """
    for name, values in (("latency_batch_sizes", batch_sizes), ("latency_prompt_lens", prompt_lens)):
        if not values:
            raise UserError(f"eval.{name} must list at least one value")
        bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
        if bad:
            raise UserError(f"eval.{name} must hold positive integers, got {bad[0]!r}")
    return [Workload(b, p) for p in sorted(set(prompt_lens)) for b in sorted(set(batch_sizes))]


def check_sweep(models: dict[str, nn.Module], batch_sizes: list[int], prompt_lens: list[int], new_tokens: int,
                warmup: int, repeats: int) -> list[Workload]:
    """The grid, after checking every workload fits every model (raises UserError otherwise)."""
    grid = sweep_grid(batch_sizes, prompt_lens)
    _check_workload(models, max(batch_sizes), max(prompt_lens), new_tokens, warmup, repeats,
                    prompt_setting="eval.latency_prompt_lens")
    return grid


def sweep_latency(models: dict[str, nn.Module], batch_sizes: list[int], prompt_lens: list[int],
                  new_tokens: int = 32, warmup: int = 2, repeats: int = 5, seed: int = 0,
                  progress: bool = False) -> dict[Workload, dict[str, LatencyResult]]:
    """Prefill / decode speed and memory of every model at every workload of the grid.

    The whole grid is validated before anything is measured.

    Args:
        models: name -> causal LM; the first is the reference of `sweep_rows`' speedups.
        batch_sizes, prompt_lens: the grid (every pair is measured).
        new_tokens, warmup, repeats, seed, progress: as in `compare_latency`, for every workload.

    Returns:
        workload -> (name -> LatencyResult), workloads in grid order.
    """
    grid = check_sweep(models, batch_sizes, prompt_lens, new_tokens, warmup, repeats)
    sweep = {}
    for workload in grid:
        log.info("latency sweep: batch %d, prompt %d", workload.batch_size, workload.prompt_len)
        sweep[workload] = compare_latency(models, batch_size=workload.batch_size, prompt_len=workload.prompt_len,
                                          new_tokens=new_tokens, warmup=warmup, repeats=repeats, seed=seed,
                                          progress=progress)
    return sweep


def sweep_rows(sweep: dict[Workload, dict[str, LatencyResult]]) -> list[dict]:
    """One row per workload and model: tokens/s with their quartiles, speedup over the first model, memory."""
    rows = []
    for workload, results in sweep.items():
        base = next(iter(results.values()))
        for name, r in results.items():
            row = {"batch_size": workload.batch_size, "prompt_len": workload.prompt_len, "model": name,
                   "prefill_tokens_per_s": r.prefill_tokens_per_s, "prefill_iqr": list(r.prefill_iqr),
                   "decode_tokens_per_s": r.decode_tokens_per_s, "decode_iqr": list(r.decode_iqr),
                   "prefill_speedup": r.prefill_tokens_per_s / base.prefill_tokens_per_s,
                   "decode_speedup": r.decode_tokens_per_s / base.decode_tokens_per_s,
                   "weights_bytes": r.weights_bytes, "kv_cache_bytes": r.kv_cache_bytes,
                   "memory_bytes": r.weights_bytes + r.kv_cache_bytes}
            if r.cuda_peak_bytes is not None:
                row["cuda_peak_bytes"] = r.cuda_peak_bytes
            rows.append(row)
    return rows
