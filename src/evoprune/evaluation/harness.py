"""Score a model (in memory, or any folder evoprune can load) on lm-eval tasks, offline."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

from transformers import PreTrainedModel

from ..errors import UserError
from .tasks import PREFIX, TASKS, resolve_tasks, task_configs_dir

log = logging.getLogger(__name__)


def _task_metrics(results: dict, name: str, shots: int, n: int | None) -> dict:
    raw = results.get(PREFIX + name, {})
    metrics = {"num_fewshot": shots}
    for key, value in raw.items():
        if key in ("alias", "sample_len") or not isinstance(value, (int, float)):
            continue
        metric, _, _filter = key.partition(",")
        metrics[metric] = float(value)
    if n is not None:
        metrics["samples"] = n
    metrics["main_metric"] = TASKS[name].main_metric
    metrics["split_note"] = TASKS[name].note
    return metrics


def score_tasks(model: PreTrainedModel, tokenizer, task_names: list[str], include_path: str | Path,
                num_fewshot: int = 0, limit: int | None = None, batch_size: int = 8, seed: int = 0) -> dict:
    """lm-eval's results for `task_names` (names as in the YAMLs under `include_path`), offline."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
    return simple_evaluate(model=lm, tasks=task_names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                           log_samples=False, bootstrap_iters=100, random_seed=seed, numpy_random_seed=seed,
                           torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR")


def run_tasks(model: PreTrainedModel, tokenizer, tasks: str, limit: int | None = None,
              num_fewshot: int | None = None, batch_size: int = 8, seed: int = 0) -> dict:
    """Run a preset or a comma list of tasks; returns {task: {metric: value, ...}, "average": ...}.

    `limit` caps the examples per task (per subject for MMLU); a preset may bring its own limit.
    """
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}")
    chosen, preset_limit, note = resolve_tasks(tasks, num_fewshot)
    limit = limit if limit is not None else preset_limit
    include = task_configs_dir()
    by_shots: dict[int, list[str]] = defaultdict(list)
    for name, shots in chosen:
        by_shots[shots].append(name)
    out: dict = {}
    started = time.time()
    for shots, names in by_shots.items():
        result = score_tasks(model, tokenizer, [PREFIX + n for n in names], include, shots, limit, batch_size, seed)
        counts = {k.removeprefix(PREFIX): v.get("effective") for k, v in result.get("n-samples", {}).items()}
        for name in names:
            n = counts.get(name)
            if n is None:  # a group (MMLU): the sum over its subtasks
                n = sum(v for k, v in counts.items() if k.startswith(name + "_") and v) or None
            out[name] = _task_metrics(result["results"], name, shots, n)
    main = [out[n][TASKS[n].main_metric] for n, _ in chosen if TASKS[n].main_metric in out[n]]
    out["average"] = {"main_metric_mean": sum(main) / len(main) if main else float("nan"), "tasks": len(main),
                      "limit": limit, "seconds": round(time.time() - started, 1), "note": note}
    return out
