"""Objectives of the sub-network search, all minimised: quality (KL to the dense teacher, held-out
loss) and cost (exact parameters, FLOPs per token, measured decode latency per token).

A configuration's sub-network is the space's (`SearchSpace`: first-k slices of the importance-sorted model;
`LevelSpace`: the database's stitched levels). Latency is measured by really running it
(`evaluation.latency`), and cached per configuration in a JSON file, so a resumed search does not time the
same sub-network twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..atomic import write_json
from ..config import NAS_COST, NAS_QUALITY
from ..errors import UserError
from ..evaluation.latency import measure_latency
from ..evaluation.perplexity import mean_nll
from ..evaluation.teacher import TeacherCache, kl_to_teacher
from .level_space import LevelSpace
from .space import SearchSpace

QUALITY = NAS_QUALITY  # kl, loss (nas.objectives)
COST = NAS_COST  # params, flops, latency


def check_objectives(names: list[str]) -> None:
    unknown = [n for n in names if n not in QUALITY + COST]
    if unknown or not 2 <= len(names) <= 3:
        raise UserError(f"objectives must be 2 or 3 of {', '.join(QUALITY + COST)}; got {', '.join(names) or 'none'}"
                        + (f" (unknown: {', '.join(unknown)})" if unknown else ""))


def make_objectives(model: PreTrainedModel, adapter: ModelAdapter, space: SearchSpace | LevelSpace,
                    names: list[str], eval_blocks: torch.Tensor, teacher: TeacherCache | None,
                    latency_cache: Path | None = None, batch_size: int = 4,
                    latency_workload: dict | None = None) -> Callable[[dict], list[float]]:
    """A function from a configuration to its objective values, in the order of `names`.

    `latency_workload`: keyword arguments of `measure_latency` (prompt_len, new_tokens, repeats ...).
    """
    workload = dict(latency_workload or {})
    check_objectives(names)
    if "kl" in names and teacher is None:
        raise UserError("the kl objective needs the dense teacher's cached distribution")
    timings = json.loads(latency_cache.read_text()) if latency_cache and latency_cache.exists() else {}

    def evaluate(config: dict) -> list[float]:
        needs_model = any(n in names for n in ("kl", "loss", "latency"))
        sliced = space.slice(model, adapter, config) if needs_model else None
        values = []
        for name in names:
            if name == "kl":
                values.append(kl_to_teacher(sliced, eval_blocks, teacher, batch_size=batch_size))
            elif name == "loss":
                values.append(mean_nll(sliced, eval_blocks, batch_size))
            elif name == "params":
                values.append(float(space.num_params(config)))
            elif name == "flops":
                values.append(float(space.flops_per_token(config)))
            else:
                key = json.dumps(config, sort_keys=True)
                if key not in timings:
                    timings[key] = 1.0 / measure_latency(sliced, **workload).decode_tokens_per_s
                    if latency_cache is not None:
                        write_json(latency_cache, timings)
                values.append(timings[key])
        return values

    return evaluate
