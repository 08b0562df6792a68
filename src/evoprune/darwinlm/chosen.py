"""What happens to the model a darwin search chose before it is evaluated: the sequential re-fit and blockwise
local distillation; and, for benches, a finished run's choice stitched again and measured beside others."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..arch.spec import SubnetSpec
from ..config import RunConfig, load_config, to_dict
from ..data import data_blocks
from ..evaluation.suite import evaluate_models, teacher_for
from ..evaluation.unseen import load_unseen
from ..models import LoadedModel, load_source
from ..obs.refit import refit, refitted_weights
from ..obs.run_database import build_database
from ..training.blockwise import BlockwiseSettings, blockwise_distill


def stitched_run(run: str | Path, overrides: list[str] | None = None
                 ) -> tuple[RunConfig, LoadedModel, SubnetSpec, dict[str, torch.Tensor]]:
    """The run's configuration (with `overrides`), its dense model, and the spec and stitched weights of its
    chosen genotype."""
    run = Path(run)
    cfg = load_config(run / "config.yaml", overrides)
    dense = load_source(cfg)
    db = build_database(cfg, dense, run / "database", progress=False)
    genotype = SubnetSpec.load(run / "spec.json").meta["genotype"]
    spec, replace = db.stitch(genotype["attention"], genotype["mlp"], dense.adapter)
    return cfg, dense, spec, replace


def evaluate_beside(cfg: RunConfig, dense: LoadedModel, models: dict) -> dict[str, dict]:
    """`models` measured side by side as a darwin run measures its result: KL and perplexity on the held-out
    blocks, dev and test text; a model named "dense" is read from the quality cache when measured before."""
    eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
    teacher = teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, cfg.data.batch_size)
    return evaluate_models(models, eval_blocks, teacher, cfg.eval, cfg.data.batch_size,
                           unseen=load_unseen(cfg, dense.tokenizer), unchanged=frozenset({"dense"}))


def refit_chosen(cfg: RunConfig, dense: LoadedModel, spec, pruned, progress: bool):
    """`pruned` with its output projections re-solved on its own inputs (`obs/refit.py`), the weights to export,
    and what the re-fit did."""
    started = time.time()
    blocks = data_blocks(cfg, dense.tokenizer, "calibration", cfg.data.calibration_blocks)
    kept = spec.kept_layers()
    modules = refit(dense.model, pruned, dense.adapter, kept, blocks, cfg.data.batch_size, cfg.refit.target,
                    cfg.refit.percdamp, progress)
    replace = refitted_weights(pruned, dense.adapter, kept, dense.adapter.parameter_name)
    record = {"target": cfg.refit.target, "seconds": round(time.time() - started, 1), "tokens": blocks.numel(),
              **_mean_errors(modules),
              "modules": [m.to_dict() for m in modules]}
    return pruned, replace, record


def distill_chosen(cfg: RunConfig, dense: LoadedModel, pruned, spec, replace: dict, progress: bool):
    """`pruned` with each kept layer trained alone to reproduce the dense layer (`training/blockwise.py`), on
    train-split blocks; the weights to export (`replace` with the trained tensors over it), and a record."""
    started = time.time()
    b = cfg.bld
    n_blocks = b.blocks or math.ceil(b.tokens / cfg.data.seq_len)
    blocks = data_blocks(cfg, dense.tokenizer, "train", n_blocks)
    settings = BlockwiseSettings(b.tokens, b.lr, b.weights, b.inputs, b.loss, cfg.seed)
    result = blockwise_distill(dense.model, pruned, dense.adapter, spec.kept_layers(), blocks, cfg.data.batch_size,
                               settings, progress=progress)
    layers = result.layers
    record = {**to_dict(b), "seconds": round(time.time() - started, 1), "train_blocks": len(blocks),
              "steps_per_layer": layers[0].steps if layers else 0,
              **_mean_errors(layers),
              "layers": [r.to_dict() for r in layers]}
    return pruned, {**replace, **result.weights}, record


def _mean_errors(parts: list) -> dict[str, float]:
    """Mean error before and after over the modules or layers a re-fit or a distillation changed."""
    n = max(len(parts), 1)
    return {"mean_error_before": round(sum(p.error_before for p in parts) / n, 6),
            "mean_error_after": round(sum(p.error_after for p in parts) / n, 6)}
