"""What the trials of a nas run depend on, saved in its `nas_run.json`: a rerun resumes only with the same.

Not settings: `--trials` (raising it extends the study), `--pick` and the size target `--sparsity` /
`--target-params` (the pick is chosen from the front after the search), `data.batch_size` (the scores are
per block), `database.store` (where the database is kept). The defaults of `--sampler`, `--sparsity-range`,
`--weights` and `--start` are saved as the values they stand for, so a rerun of the same command resumes only
while the defaults stay the same; the saved file notes which values were defaults (`notes`, not compared).
A run saved before `--start` existed started from the uniform genotypes: it resumes with `--start uniform`.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from ..config import RunConfig
from ..fingerprint import tokens_fingerprint
from ..models import LoadedModel
from ..obs.database import model_fingerprint
from .arguments import DEFAULT_SAMPLER, DEFAULT_SPARSITY_RANGE, DEFAULT_WEIGHTS, FULL_SPACE, NasArguments

MARKER = "nas_run.json"


def run_settings(cfg: RunConfig, args: NasArguments) -> dict:
    """The settings known before the model is loaded (see `fingerprints` for the rest)."""
    d, objectives = cfg.data, list(args.objectives)
    settings = {"objectives": objectives, "sampler": args.sampler, "seed": cfg.seed,
                "supernet_steps": args.supernet_steps,
                "sparsity_range": list(args.sparsity_range) if args.sparsity_range else None,
                "model": {"source": cfg.model.source, "dtype": cfg.model.dtype},
                "data": {"source": d.source, "text_field": d.text_field, "seq_len": d.seq_len,
                         "calibration_blocks": d.calibration_blocks, "eval_blocks": d.eval_blocks},
                "prune": {"multiple": cfg.prune.multiple}, "eval": {}}
    if cfg.search.space != "full":  # left out at its default, so that runs saved before it existed resume
        settings["prune"]["space"] = cfg.search.space
    if args.weights != "importance":  # left out as runs saved before it existed had it (inside `prune`, which is
        settings["prune"]["weights"] = args.weights  # compared whole: either way round a change is refused)
        settings["database"] = {k: v for k, v in asdict(cfg.database).items() if k != "store"}
    if args.start == "mip":  # left out for uniform, the start of runs saved before it existed
        settings["start"] = {"method": "mip", "mip_step": args.mip_step,
                             "replace_one_tokens": cfg.search.replace_one_tokens,
                             "replace_one_all_levels": cfg.search.replace_one_all_levels}
    if "kl" in objectives:
        settings["eval"]["top_k"] = cfg.eval.top_k
    if "latency" in objectives:
        settings["model"]["device"] = cfg.model.device
        settings["eval"].update(prompt_len=cfg.eval.prompt_len, new_tokens=cfg.eval.new_tokens,
                                repeats=cfg.eval.repeats)
    return settings


def saved_form(settings: dict) -> dict:
    """`settings` as `nas_run.json` holds them, with `notes` on the values that are defaults (not compared)."""
    notes = {}
    if settings["sampler"] == DEFAULT_SAMPLER:
        notes["sampler"] = "the default"
    if settings["prune"].get("weights", "importance") == DEFAULT_WEIGHTS:
        notes["weights"] = "the default"
    if settings.get("start", {}).get("method") == "mip":
        notes["start"] = "the default with weights database"
    if settings["sparsity_range"] == list(DEFAULT_SPARSITY_RANGE):
        notes["sparsity_range"] = ("the default with params among the objectives (fractions of the block parameters "
                                   f"removed); --sparsity-range {FULL_SPACE} searches the whole space")
    elif settings["sparsity_range"] is None:
        notes["sparsity_range"] = "the whole space"
    return {**settings, "notes": notes}


def fingerprints(dense: LoadedModel, calibration: torch.Tensor) -> dict:
    """Hashes of the weights and of the calibration token blocks: another model or text under the same name."""
    return {"weights": model_fingerprint(dense.model, dense.adapter), "calibration_text": tokens_fingerprint(calibration)}
