"""`evoprune eval`: perplexity, KL to a dense teacher, size, speed and lm-eval tasks of a model; a run directory out."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import memory
from ..atomic import check_output_dir, staged_dir, write_json, write_text
from ..config import RunConfig, dump_config
from ..data import data_blocks
from ..errors import UserError
from ..memory import memory_section, watched
from ..memory_plan import choose_bounded
from ..models import load_source
from ..report import markdown_table, plot_bars, write_report
from ..rundir import holding_run_lock
from .latency_sweep import check_sweep, sweep_latency, sweep_rows
from .paper_report import paper_section
from ..weights.compute_dtype import LOADED_AS
from .mapped_latency import latency_for_mapped
from .suite import METRIC_COLUMNS, evaluate_models, teacher_for
from .sweep_report import sweep_section
from .task_report import task_section
from .unseen import describe_unseen, load_unseen
from .unseen_report import unseen_section

log = logging.getLogger(__name__)


@holding_run_lock
@watched
def evaluate(cfg: RunConfig, model: str, out: str | Path, teacher: str | None = None, force: bool = False,
             progress: bool = True, tasks: str | None = None, limit: int | None = None,
             num_fewshot: int | None = None) -> Path:
    """Evaluate `model` (and, side by side, the dense `teacher` when given) and write a run directory.

    With `tasks` (a preset or a comma list), every model is also scored on those lm-eval tasks.
    """
    from .tasks import check_task_options

    check_task_options(num_fewshot, limit)
    check_output_dir(out, force)
    unbounded = [flag for flag, on in (("--tasks", tasks is not None), ("--paper-ppl", cfg.eval.paper_ppl)) if on]
    if unbounded and cfg.max_memory_gib is not None:
        raise UserError(f"{' and '.join(unbounded)}: whole batches of full-vocabulary logits, which --max-memory does "
                        "not bound; run them in an evaluation without --max-memory")
    if tasks is not None:
        from .tasks import resolve_tasks, task_configs_dir

        resolve_tasks(tasks, num_fewshot)  # bad names fail before any model is loaded
        task_configs_dir()
    papers = None
    if cfg.eval.paper_ppl:  # the data is read before any model is loaded, so a missing set fails first
        from .paper_perplexity import paper_sets, paper_text

        papers = {paper: paper_text(paper, getattr(cfg.eval, f"{paper.name}_source"))
                  for paper in paper_sets(cfg.eval.paper_ppl)}
    started = time.time()
    bounded = choose_bounded(cfg, "eval", model, teacher)  # before any weight is read
    with memory.stage("load model"):
        student = load_source(cfg, model, bounded=bounded)
    models = {"model": student.model}
    teacher_loaded = None
    if teacher:
        with memory.stage("load model"):
            teacher_loaded = load_source(cfg, teacher, bounded=bounded)
        if len(teacher_loaded.tokenizer) != len(student.tokenizer) or \
                teacher_loaded.model.config.vocab_size != student.model.config.vocab_size:
            raise UserError(f"teacher {teacher} and model {model} have different vocabularies; KL needs the same tokenizer")
        models = {"teacher": teacher_loaded.model, "model": student.model}
    eval_cfg, latency_skipped = latency_for_mapped(cfg.eval, models)
    grid = eval_cfg.sweep_grid() if eval_cfg.latency else None
    if grid is not None:  # a workload too long for the model fails now, not after the evaluation
        check_sweep(models, *grid, cfg.eval.new_tokens, cfg.eval.warmup, cfg.eval.repeats)
    eval_blocks = data_blocks(cfg, student.tokenizer, "eval", cfg.data.eval_blocks)
    cache = None
    if teacher_loaded is not None:
        with memory.stage("teacher cache"):
            cache = teacher_for(teacher_loaded.model, str(teacher_loaded.path), eval_blocks, cfg.eval,
                                cfg.data.batch_size, progress)
    with memory.stage("evaluation"):
        unseen = load_unseen(cfg, student.tokenizer)
        rows = evaluate_models(models, eval_blocks, cache, eval_cfg, cfg.data.batch_size, progress, unseen=unseen,
                                unchanged=frozenset(models))  # both read from disk as they are
    metrics = {**rows, "eval_tokens": int(eval_blocks.numel())}
    if unseen is not None:
        metrics["unseen_text"] = describe_unseen(unseen)
    loaded = {"model": student} if teacher_loaded is None else {"teacher": teacher_loaded, "model": student}
    task_scores = {}
    if tasks is not None:
        from .harness import run_tasks

        with memory.stage("tasks"):
            task_scores = {name: run_tasks(m.model, m.tokenizer, tasks, limit, num_fewshot, seed=cfg.seed)
                           for name, m in loaded.items()}
        metrics.update(task_scores["model"])
        if "teacher" in task_scores:
            metrics["teacher_tasks"] = task_scores["teacher"]
    if papers is not None:
        from .paper_perplexity import paper_perplexity

        with memory.stage("paper perplexity"):
            metrics["paper_perplexity"] = {
                name: {paper.name: paper_perplexity(m.model, m.tokenizer, paper, text, cfg.eval.paper_seq_len,
                                                    cfg.data.batch_size) for paper, text in papers.items()}
                for name, m in loaded.items()}
    if grid is not None:
        with memory.stage("latency sweep"):
            sweep = sweep_latency(models, *grid, new_tokens=cfg.eval.new_tokens, warmup=cfg.eval.warmup,
                                  repeats=cfg.eval.repeats, seed=cfg.seed, progress=progress)
        metrics["latency_sweep"] = sweep_rows(sweep)
    metrics["wall_time_s"] = round(time.time() - started, 1)
    if latency_skipped is not None:
        metrics["latency_skipped"] = latency_skipped
    metrics["memory"] = {**memory.summary(),
                         "bounded": any(getattr(m, LOADED_AS, None) is not None for m in models.values())}
    with staged_dir(out, force=force) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_text(tmp / "config.yaml", dump_config(cfg))
        plot_bars({k: r["perplexity"] for k, r in rows.items()}, "held-out perplexity", "perplexity (log scale)",
                  tmp / "perplexity.png", log=True)
        table = markdown_table(list(rows.values()), [c for c in METRIC_COLUMNS if c in next(iter(rows.values()))])
        sections = [("Result", table + "\n![perplexity](perplexity.png)\n")]
        if unseen is not None:
            sections.append(("Unseen text", unseen_section(rows, unseen, tmp / "unseen.png")))
        if task_scores:
            sections.append(("Tasks (lm-evaluation-harness, offline)", task_section(task_scores, tmp / "tasks.png")))
        if papers is not None:
            sections.append(("Perplexity as the papers compute it", paper_section(metrics["paper_perplexity"])))
        if grid is not None:
            ideal = {name: row["ideal_speedup"] for name, row in rows.items()}
            sections.append(("Latency sweep", sweep_section(metrics["latency_sweep"], ideal, tmp / "latency_sweep.png",
                                                            cfg.eval.new_tokens, cfg.eval.repeats, cfg.eval.warmup)))
        if latency_skipped is not None:
            sections.append(("Latency", latency_skipped[0].upper() + latency_skipped[1:] + "."))
        sections.append(("Data", f"{cfg.data.source}, held-out split, {metrics['eval_tokens']:,} tokens."))
        sections.append(("Memory", memory_section(metrics["memory"])))
        write_report(tmp / "report.md", f"evoprune eval: {model}", sections)
    return Path(out)
