"""Latency is not timed for a model kept mapped as stored (bounded memory): it would time each module's conversion."""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from ..config import EvalConfig
from ..weights.compute_dtype import LOADED_AS

log = logging.getLogger(__name__)


def latency_for_mapped(cfg: EvalConfig, models: dict[str, nn.Module]) -> tuple[EvalConfig, str | None]:
    """`cfg` with latency off and the reason (logged, for metrics.json and the report) when any of `models` is kept
    mapped; `cfg` and None otherwise."""
    mapped = [name for name, m in models.items() if getattr(m, LOADED_AS, None) is not None]
    if not mapped or not cfg.latency:
        return cfg, None
    note = (f"latency not measured: {' and '.join(mapped)} kept mapped as stored (bounded memory), "
            "so it would time each module's conversion; run with model.bounded=false to measure it")
    log.warning(note)
    return dataclasses.replace(cfg, latency=False), note
