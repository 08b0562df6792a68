"""What the trials of a nas run depend on, saved in its `nas_run.json`: a rerun resumes only with the same.

Not settings: `--trials` (raising it extends the study), `--pick` (chosen from the front after the
search), `data.batch_size` (the scores are per block). The defaults of `--sampler` and `--params-range`
are saved as the values they stand for, so a rerun of the same command resumes only while the
defaults stay the same; the saved file notes which values were defaults (`notes`, not compared).
"""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..fingerprint import tokens_fingerprint
from ..models import LoadedModel
from ..obs.database import model_fingerprint
from .arguments import DEFAULT_PARAMS_RANGE, DEFAULT_SAMPLER, FULL_SPACE

MARKER = "nas_run.json"


def run_settings(cfg: RunConfig, objectives: list[str], sampler: str, supernet_steps: int,
                 params_range: tuple[float, float] | None) -> dict:
    """The settings known before the model is loaded (see `fingerprints` for the rest)."""
    d = cfg.data
    settings = {"objectives": list(objectives), "sampler": sampler, "seed": cfg.seed, "supernet_steps": supernet_steps,
                "params_range": list(params_range) if params_range else None,
                "model": {"source": cfg.model.source, "dtype": cfg.model.dtype},
                "data": {"source": d.source, "text_field": d.text_field, "seq_len": d.seq_len,
                         "calibration_blocks": d.calibration_blocks, "eval_blocks": d.eval_blocks},
                "prune": {"multiple": cfg.prune.multiple}, "eval": {}}
    if cfg.search.space != "full":  # left out at its default, so that runs saved before it existed resume
        settings["prune"]["space"] = cfg.search.space
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
    if settings["params_range"] == list(DEFAULT_PARAMS_RANGE):
        notes["params_range"] = (f"the default with params among the objectives (fractions of the dense parameters); "
                                 f"--params-range {FULL_SPACE} searches the whole space")
    elif settings["params_range"] is None:
        notes["params_range"] = "the whole space"
    return {**settings, "notes": notes}


def fingerprints(dense: LoadedModel, calibration: torch.Tensor) -> dict:
    """Hashes of the weights and of the calibration token blocks: another model or text under the same name."""
    return {"weights": model_fingerprint(dense.model, dense.adapter), "calibration_text": tokens_fingerprint(calibration)}
