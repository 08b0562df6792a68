"""The model a finished darwin run chose, stitched again from its database (to re-fit or distill it apart)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..arch.spec import SubnetSpec
from ..config import RunConfig, load_config
from ..data import data_blocks
from ..evaluation.suite import evaluate_models, teacher_for
from ..evaluation.unseen import load_unseen
from ..models import LoadedModel, load_source
from ..obs.run_database import build_database


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
