"""A per-module, per-level latency table, measured once on this machine, for a latency budget.

Every distinct block shape in the database (attention: query heads × KV groups; MLP: kept
neurons) is cut out of layer 0 into a one-layer model and its block is timed alone: `prefill`
runs `tokens` tokens at batch 1; `decode` runs one token against a KV cache of `tokens`
positions. Shapes are timed round-robin (warm-up first, median of the repeats) so that drift of
a noisy machine spreads over all of them; each sample runs enough calls to last a few
milliseconds, and a shape's cost is its fastest sample (the least disturbed by other work; the
median is kept beside it). Costs are made non-decreasing along each ladder, so a level never looks
cheaper than a smaller one because of timing noise.

A saved table is reused only for the same measured block shapes, dtype, device, attention
implementation, machine (CPU / GPU model, core count, torch threads, torch version) and settings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.hf.modeling_evoprune import CACHE_ARG
from ..arch.spec import LayerSpec, SubnetSpec
from ..atomic import write_json
from ..device import synchronize
from ..errors import UserError
from ..modes import eval_mode
from ..obs.database import Database
from ..levels.budget import KINDS, CostTable

log = logging.getLogger(__name__)

MODES = ("prefill", "decode")
SAMPLE_SECONDS = 0.005


@dataclass(frozen=True)
class LatencySettings:
    mode: str = "prefill"
    tokens: int = 128
    repeats: int = 7
    warmup: int = 2


def shape_key(kind: str, level) -> tuple[int, ...]:
    return (len(level.heads), len(level.kv_heads)) if kind == "attention" else (level.width,)


def _one_block_model(dense: PreTrainedModel, adapter: ModelAdapter, db: Database, kind: str, layer: int,
                     level: int) -> PreTrainedModel:
    shape = db.shape
    lv = db.levels[kind][layer][level]
    full = LayerSpec.full(shape.layers[0])
    if kind == "attention":
        first = LayerSpec(list(lv.heads), list(lv.kv_heads), [])
    else:
        first = LayerSpec(full.heads, full.kv_heads, list(range(lv.width)))
    rest = [LayerSpec([], [], []) for _ in shape.layers[1:]]
    return adapter.slice(dense, SubnetSpec(shape, [first] + rest))


class _BlockTimer:
    """One block of a one-layer model with fixed random inputs, able to time one call."""

    def __init__(self, model: PreTrainedModel, adapter: ModelAdapter, kind: str, settings: LatencySettings):
        layer = adapter.layers(model)[0]
        self.block = adapter.attention(layer) if kind == "attention" else adapter.mlp(layer)
        self.kind, self.mode = kind, settings.mode
        param = next(model.parameters())
        self.device = param.device
        gen = torch.Generator().manual_seed(0)
        hidden = model.config.hidden_size
        context = torch.randn(1, settings.tokens, hidden, generator=gen).to(param)
        self.x = context if settings.mode == "prefill" else torch.randn(1, 1, hidden, generator=gen).to(param)
        self.kwargs: dict = {}
        if kind == "attention":
            self.cache = None
            if settings.mode == "decode":
                self.cache = DynamicCache(config=model.config)
                positions = torch.arange(settings.tokens, device=self.device)[None]
                with torch.no_grad():
                    self.block(context, position_embeddings=adapter.position_embeddings(model, context, positions),
                               attention_mask=None, **{CACHE_ARG: self.cache})
                self.kwargs[CACHE_ARG] = self.cache
            positions = torch.arange(self.x.shape[1], device=self.device)[None] + (
                settings.tokens if settings.mode == "decode" else 0)
            self.kwargs.update(position_embeddings=adapter.position_embeddings(model, self.x, positions),
                               attention_mask=None)

        self.calls = 1

    def _once(self) -> None:
        with torch.no_grad():
            self.block(self.x, **self.kwargs)
        if self.kind == "attention" and self.mode == "decode":
            self.cache.crop(-1)  # drop the token just added: every call sees the same context

    def calibrate(self, sample_seconds: float) -> None:
        """Choose how many calls one sample makes, so that it lasts about `sample_seconds`."""
        self.calls = 1
        self.calls = max(1, math.ceil(sample_seconds / max(self(), 1e-7)))

    def __call__(self) -> float:
        """Seconds per call, over one sample of `calls` calls."""
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(self.calls):
            self._once()
        synchronize(self.device)
        return (time.perf_counter() - started) / self.calls


def measure_latency_table(dense: PreTrainedModel, adapter: ModelAdapter, db: Database,
                          settings: LatencySettings = LatencySettings(), progress: bool = True) -> dict:
    """Median milliseconds per distinct block shape, and the CostTable built from them."""
    if settings.mode not in MODES:
        raise UserError(f"latency mode must be one of {', '.join(MODES)}, got {settings.mode!r}")
    if settings.tokens <= 0 or settings.repeats <= 0 or settings.warmup < 0:
        raise UserError("latency tokens and repeats must be positive and warm-up >= 0")
    wanted = distinct_shapes(db)
    timers = {}
    with eval_mode(dense):
        for key, (kind, i, lv) in tqdm(wanted.items(), desc="latency table", disable=not progress):
            model = _one_block_model(dense, adapter, db, kind, i, lv).eval()
            timers[key] = _BlockTimer(model, adapter, kind, settings)
            timers[key].calibrate(SAMPLE_SECONDS)
        samples: dict[tuple, list[float]] = {key: [] for key in timers}
        for r in range(settings.warmup + settings.repeats):
            for key, timer in timers.items():
                elapsed = timer()
                if r >= settings.warmup:
                    samples[key].append(elapsed)
    ms = {key: 1000 * min(v) for key, v in samples.items()}
    median_ms = {key: 1000 * statistics.median(v) for key, v in samples.items()}
    costs = monotone_costs(db, ms)
    return {"settings": asdict(settings), "device": str(next(dense.parameters()).device),
            "dtype": str(next(dense.parameters()).dtype), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "block_ms": {"/".join(map(str, k)): round(v, 4) for k, v in ms.items()},
            "block_ms_median": {"/".join(map(str, k)): round(v, 4) for k, v in median_ms.items()},
            "costs": costs}


def distinct_shapes(db: Database) -> dict[tuple, tuple[str, int, int]]:
    """(kind, *shape_key) -> (kind, layer, level) of the first level of that shape, for every non-removed level."""
    wanted: dict[tuple, tuple[str, int, int]] = {}
    for kind in KINDS:
        for i, levels in enumerate(db.levels[kind]):
            for lv_index, lv in enumerate(levels):
                if lv_index > 0:
                    wanted.setdefault((kind,) + shape_key(kind, lv), (kind, i, lv_index))
    return wanted


def monotone_costs(db: Database, ms: dict[tuple, float]) -> dict[str, list[list[float]]]:
    """Per kind and layer, the ladder of level costs from per-shape milliseconds: 0 for the removed level,
    then never decreasing (timing noise must not make a level look cheaper than a smaller one)."""
    costs = {}
    for kind in KINDS:
        costs[kind] = []
        for levels in db.levels[kind]:
            ladder, running = [], 0.0
            for lv_index, lv in enumerate(levels):
                running = max(running, ms[(kind,) + shape_key(kind, lv)]) if lv_index > 0 else 0.0
                ladder.append(running)
            costs[kind].append(ladder)
    return costs


def table_key(dense: PreTrainedModel, db: Database, settings: LatencySettings) -> dict:
    """Everything a measured table depends on, as saved beside it (JSON types)."""
    param = next(dense.parameters())
    blocks = sorted({"/".join(map(str, (kind,) + shape_key(kind, lv)))
                     for kind in KINDS for levels in db.levels[kind] for lv in levels[1:]})
    key = {"settings": asdict(settings), "shape": db.shape.to_dict(), "blocks": blocks, "dtype": str(param.dtype),
           "device": param.device.type, "attention": getattr(dense.config, "_attn_implementation", None),
           "machine": machine_description(param.device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    return json.loads(json.dumps(key))


def machine_description(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    machine = {"arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count()}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def latency_cost_table(dense: PreTrainedModel, adapter: ModelAdapter, db: Database, path: Path,
                       settings: LatencySettings, progress: bool = True) -> CostTable:
    """The latency CostTable of this run: measured once, then read back from `path` (resume).

    A saved table measured with other settings is refused; one measured for other block shapes,
    dtype, device or another machine is measured again.
    """
    return cached_cost_table(path, settings, table_key(dense, db, settings),
                             lambda: measure_latency_table(dense, adapter, db, settings, progress))


def cached_cost_table(path: Path, settings: LatencySettings, key: dict, measure) -> CostTable:
    """The CostTable saved at `path` when it was measured for `key`, else `measure()` (a table dict) saved there.

    Raises:
        UserError: the saved table is corrupt or was measured with other `settings`.
    """
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            same_settings, saved_key = saved["settings"] == asdict(settings), saved.get("key")
            costs = CostTable("latency", saved["costs"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"latency table {path} is corrupt; delete it to measure it again") from None
        if not same_settings:
            raise UserError(f"latency table {path} was measured with other settings; delete it to measure again")
        if saved_key == key:
            return costs
        differ = sorted(k for k in key if not isinstance(saved_key, dict) or saved_key.get(k) != key[k])
        log.warning("latency table %s was measured with another %s; measuring it again", path, ", ".join(differ))
    table = measure()
    write_json(path, {**table, "key": key})
    return CostTable("latency", table["costs"])
