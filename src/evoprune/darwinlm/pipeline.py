"""The DarwinLM pipeline: database -> evolutionary search -> export -> evaluate, in one run directory.

Run directory: `database/` (resumable layer by layer), `search/` (state.json + history.jsonl,
resumable per generation), then `model/`, `spec.json`, `metrics.json`, `config.yaml`,
`report.md` and plots. Rerunning the same command on the same directory resumes; a changed
configuration is refused, naming the keys that differ; `--force` starts over. One process at a
time writes a run (`rundir.run_lock`), and nothing is written before every check has passed.

Under `torchrun --nproc_per_node N` the candidate evaluations are shared out over the processes
(`DistributedCandidateEvaluator`, same result as one process) and only rank 0 writes: it builds
the database, latency table and teacher caches first and the others then read them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

from .. import memory
from ..arch.streamed_export import export_sliced
from ..arch.shape import ModelShape
from ..atomic import write_json, write_text
from ..config import RENAMED_PROFILES, RunConfig, dump_config, to_dict
from .report import parent_kl_curve, write_darwin_report
from ..errors import UserError
from ..evaluation.suite import evaluate_models, teacher_for
from ..evaluation.unseen import describe_unseen, load_unseen
from ..fingerprint import tokens_fingerprint
from ..memory import watched
from ..memory_estimate import check_memory_budget
from ..memory_plan import choose_bounded
from ..models import LoadedModel
from ..data import data_blocks
from ..models import load_source
from ..obs.database import Database, DatabaseSettings, planned_costs
from ..obs.refit import check_target as check_refit_target
from ..obs.run_database import build_database, database_settings
from ..obs.store import building
from ..arch.target import Target, resolve_target
from ..rundir import ResumableRun, run_lock
from ..evaluation.teacher_subset import TeacherSubset
from ..levels.assemble import assemble
from ..levels.budget import Budget, CostTable, make_budget, uniform_genotype
from .chosen import distill_chosen, refit_chosen
from .distributed_fitness import (DistributedCandidateEvaluator, barrier, init_distributed,
                                         main_process_first)
from .evolution import EvolutionSettings, evolve
from .family import size_label, write_front
from .family_speed import llamacpp_speeds
from .fitness import CandidateEvaluator, FitnessPool, Stage
from ..levels.genotype import Genotype
from .predicted_front import PredictedFront, predicted_front, report_section
from .latency_table import LatencySettings, latency_cost_table
from ..levels.replace_one import ReplaceOneScores, replace_one_scores, stored_scores_path
from ..serving.deploy import check_format_before_work, export_for_serving, serving_record
from ..arch.nemotron_format import check_space_fits
from ..training import TrainConfig
from ..weights.compute_dtype import LOADED_AS, compute_dtype_of, inference_slice

log = logging.getLogger(__name__)
RUN_MARKER = "darwin_run.json"
DATABASE_MEMORY = "database_memory.json"  # `evoprune database`: its per-stage memory (evoprune.memory)


def write_database_memory(out: Path, dense: LoadedModel) -> None:
    """`evoprune database`'s memory per stage, and whether the dense model stayed mapped (`memory_plan.py`)."""
    bounded = getattr(dense.model, LOADED_AS, None) is not None
    write_json(out / DATABASE_MEMORY, {**memory.summary(), "bounded": bounded})


def cost_table(db: Database, metric: str) -> CostTable:
    """Exact parameter or FLOP costs of every level (latency: see `search_cost_table`)."""
    return CostTable(metric, db.costs(metric))


def search_cost_table(cfg: RunConfig, dense: LoadedModel, db: Database, run_dir: Path,
                      progress: bool = True) -> CostTable:
    """The cost table the budget is counted in; a latency table is measured once and kept in the run."""
    if cfg.search.metric != "latency":
        return cost_table(db, cfg.search.metric)
    settings = LatencySettings(cfg.search.latency_mode, cfg.search.latency_tokens)
    if cfg.search.latency_engine == "llamacpp":
        from .llamacpp_latency import llamacpp_cost_table

        return llamacpp_cost_table(dense.model, dense.adapter, db, run_dir / "latency_table.json", settings,
                                   cfg.eval.threads, cfg.eval.repack, progress)
    return latency_cost_table(dense.model, dense.adapter, db, run_dir / "latency_table.json", settings, progress)


def budget_record(cfg: RunConfig, table: CostTable, budget: Budget, best: Genotype) -> dict:
    """What a FLOPs or latency budget asked for and what the result costs, in the table's own unit."""
    achieved = table.cost(best)
    record = {"metric": table.metric, "dense_blocks": table.full(), "target": budget.target,
              "achieved": achieved, "achieved_fraction": achieved / table.full()}
    if table.metric == "latency":
        record.update(engine=cfg.search.latency_engine, mode=cfg.search.latency_mode, tokens=cfg.search.latency_tokens)
    return record


def evolution_settings(cfg: RunConfig, spent_seconds: float = 0.0) -> EvolutionSettings:
    """The search's settings; `spent_seconds` (the replace-one scoring) counts against `search.max_minutes`."""
    r = cfg.search.resolved()
    minutes = cfg.search.max_minutes
    return EvolutionSettings(r["offspring"], r["generations"], cfg.seed, cfg.search.trade, r["init_samples"],
                             mutation_scales=tuple(cfg.search.mutation_scales),
                             max_seconds=None if minutes is None else 60 * minutes - spent_seconds)


# settings added after runs were saved: left out at their default value, so that those runs still resume
ADDED_RUN_SETTINGS = {"database": {"storage_dtype": "model"},
                      "search": {"train_embeddings": False, "space": "full", "latency_engine": "torch"},
                      "eval": {"top_k": 1024}, "refit": {"target": "none", "percdamp": 0.01},
                      "bld": {"tokens": 0, "lr": 1e-4, "weights": "all", "inputs": "dense", "loss": "nmse",
                              "blocks": None}}


# The family's predicted front (`run_predicted_front`): no size's search depends on them, and the front keeps
# its own key, so changing them resumes a family.
FRONT_FIELDS = ("predicted_front", "predicted_front_tokens")


# Settings saved under the name (and values) they had before they were renamed, so that saved runs still resume:
# prune.multiple was database.multiple; search.latency_engine transformers was torch.
SAVED_LATENCY_ENGINES = {"transformers": "torch"}


def search_config(cfg: RunConfig) -> dict:
    """The settings a resumed search must share with the run that started it."""
    config = {"model": {"source": cfg.model.source, "dtype": cfg.model.dtype}, "data": to_dict(cfg.data),
              "database": {**{k: v for k, v in to_dict(cfg.database).items() if k != "store"},
                           "multiple": cfg.prune.multiple},
              "search": {**{k: v for k, v in to_dict(cfg.search).items() if k not in FRONT_FIELDS},
                         **cfg.search.resolved()},
              "target": [cfg.prune.sparsity, cfg.prune.target_params], "seed": cfg.seed,
              "eval": {"top_k": cfg.eval.top_k},  # the fitness teachers keep top_k log-probs
              "refit": to_dict(cfg.refit), "bld": to_dict(cfg.bld)}
    former = {new: old for old, new in RENAMED_PROFILES.items()}
    # a profile keeps the name it had when runs were first saved, so those runs (and their caches) still resume
    config["search"]["profile"] = former.get(cfg.search.profile, cfg.search.profile)
    engine = cfg.search.latency_engine
    config["search"]["latency_engine"] = SAVED_LATENCY_ENGINES.get(engine, engine)
    for section, added in ADDED_RUN_SETTINGS.items():
        config[section] = {k: v for k, v in config[section].items() if added.get(k, object()) != v}
        if not config[section] and section in ("eval", "refit", "bld"):  # added whole: absent while at its defaults
            del config[section]
    return config


def search_identity(cfg: RunConfig) -> dict:
    """`search_config` without the target and the held-out blocks: what two searches at any budget share."""
    identity = search_config(cfg)
    del identity["target"]
    identity.pop("refit", None)  # chosen after the search
    identity.pop("bld", None)
    identity["data"] = {k: v for k, v in identity["data"].items() if k != "eval_blocks"}
    return identity


def make_evaluator(cfg: RunConfig, dense: LoadedModel, db: Database, stages: list[Stage],
                   progress: bool) -> CandidateEvaluator:
    seq = cfg.data.seq_len
    counts = [math.ceil(s.fitness_tokens / seq) for s in stages]
    pool = None
    if cfg.search.fitness_pool:
        pool = fitness_pool(cfg, dense, counts, progress)
        stage_blocks, teachers = pool.draw(cfg.seed)
    else:  # the first calibration blocks, the same in every selection
        calib = data_blocks(cfg, dense.tokenizer, "calibration", max(max(counts), cfg.data.calibration_blocks))
        stage_blocks = [calib[:n] for n in counts]
        teachers = [teacher_for(dense.model, str(dense.path), b, cfg.eval, cfg.data.batch_size, progress)
                    for b in stage_blocks]
    train_tokens = sum(s.train_tokens for s in stages)
    train_blocks = max(1, math.ceil(train_tokens / seq), cfg.search.train_pool)
    train = data_blocks(cfg, dense.tokenizer, "train", train_blocks) if train_tokens else stage_blocks[0]
    evaluator = CandidateEvaluator(dense.model, dense.adapter, db, stage_blocks, teachers, train,
                                   TrainConfig(lr=cfg.search.resolved()["lr"], seed=cfg.seed,
                                               loss=cfg.search.train_loss), cfg.data.batch_size, pool,
                                   rotate_training=cfg.search.train_pool > 0,
                                   train_embeddings=cfg.search.train_embeddings)
    if init_distributed()[1] > 1:  # launched by torchrun: each process evaluates a share of every selection
        return DistributedCandidateEvaluator.from_evaluator(evaluator)
    return evaluator


def fitness_pool(cfg: RunConfig, dense: LoadedModel, stage_blocks: list[int], progress: bool = True) -> FitnessPool:
    """The `search.fitness_pool` calibration blocks that follow the database's, with their teacher."""
    first, n = cfg.data.calibration_blocks, cfg.search.fitness_pool
    calib = data_blocks(cfg, dense.tokenizer, "calibration", first + n)
    if len(calib) < first + max(stage_blocks):
        raise UserError(f"the calibration split has {len(calib)} blocks of {cfg.data.seq_len} tokens: the database "
                        f"takes {first} and the search needs {max(stage_blocks)} more for its fitness; give more "
                        "text, or lower data.calibration_blocks or search.fitness_tokens")
    blocks = calib[first:]
    if len(blocks) < n:
        log.warning("fitness pool: only %d of the %d requested calibration blocks exist", len(blocks), n)
    teacher = teacher_for(dense.model, str(dense.path), blocks, cfg.eval, cfg.data.batch_size, progress)
    return FitnessPool(blocks, teacher, stage_blocks)


def mip_parent(cfg: RunConfig, dense: LoadedModel, db: Database, table: CostTable, budget: Budget,
               evaluator: CandidateEvaluator, search_dir: Path, progress: bool = True) -> tuple[Genotype, ReplaceOneScores]:
    """The MIP assembly of the run's replace-one KLs (`run_replace_one`), and the scores (with the seconds the
    scoring took, and whether this run read them whole from the store)."""
    scores = run_replace_one(cfg, dense, db, evaluator, search_dir, progress)
    return assemble(scores.scores, table, budget), scores


def run_replace_one(cfg: RunConfig, dense: LoadedModel, db: Database, evaluator: CandidateEvaluator, folder: Path,
                    progress: bool = True) -> ReplaceOneScores:
    """Replace-one KLs measured on the first `search.replace_one_tokens` of the fitness pool (or of the
    calibration blocks after the database's), kept in the database's store and copied to `folder`."""
    n = math.ceil(cfg.search.replace_one_tokens / cfg.data.seq_len)
    if evaluator.pool is not None and len(evaluator.pool.blocks) >= n:
        teacher = TeacherSubset(evaluator.pool.teacher, evaluator.pool.blocks, list(range(n)))
        blocks = teacher.blocks
    else:
        first = cfg.data.calibration_blocks
        blocks = data_blocks(cfg, dense.tokenizer, "calibration", first + n)[first:]
        teacher = teacher_for(dense.model, str(dense.path), blocks, cfg.eval, cfg.data.batch_size, progress)
    folder.mkdir(parents=True, exist_ok=True)
    stored = stored_scores_path(db, blocks, teacher, cfg.search.replace_one_all_levels)
    with building(stored):  # another run scoring the same database and blocks: wait for it, then read its scores
        scores = replace_one_scores(dense.model, dense.adapter, db, blocks, teacher, cfg.data.batch_size,
                                    stored, progress, cfg.search.replace_one_all_levels)
    kept = folder / "replace_one.json"  # the run keeps the scores it assembled from
    if not kept.is_file() or kept.read_bytes() != stored.read_bytes():  # (written once: by the first process)
        write_text(kept, stored.read_text())
    return scores


def first_parent_check(history: list[dict], start: Genotype | None, uniform: Genotype,
                       stages: list[Stage]) -> dict | None:
    """Which genotype won the first selection, the MIP assembly or the uniform one, and their first-stage KLs.

    None when the search started from the uniform genotype alone (nothing to check).
    """
    if start is None or start == uniform or not history or "first_stage" not in history[0]:
        return None
    first = history[0]
    winner = Genotype.from_dict(first["parent"])
    kls = first["first_stage"]  # in pool order: the MIP start, the uniform genotype, then random ones
    return {"winner": "mip" if winner == start else "uniform" if winner == uniform else "random",
            "mip_kl": kls[0], "uniform_kl": kls[1] if len(kls) > 1 else None,
            "first_stage_tokens": stages[0].fitness_tokens, "stages": len(stages)}


def stages_of(cfg: RunConfig) -> list[Stage]:
    """The selection stages; a fitness pool too small for the largest stage is refused here, before any work."""
    r = cfg.search.resolved()
    stages = [Stage(t, f, s) for t, f, s in zip(r["train_tokens"], r["fitness_tokens"], r["survivors"])]
    needed = max(math.ceil(s.fitness_tokens / cfg.data.seq_len) for s in stages)
    if 0 < cfg.search.fitness_pool < needed:
        raise UserError(f"search.fitness_pool={cfg.search.fitness_pool} blocks cannot hold the largest stage's "
                        f"{needed} blocks of {cfg.data.seq_len} tokens; raise it to {needed} or more")
    return stages


def planned_cost_table(shape: ModelShape, settings: DatabaseSettings, metric: str) -> CostTable:
    """The costs the database's levels will have, from the model's shape alone (params or flops)."""
    return CostTable(metric, planned_costs(shape, settings, metric))


def check_reachable(cfg: RunConfig, shape: ModelShape, target: Target) -> None:
    """Refuse a budget the database cannot reach before anything is built (a latency budget is
    checked once its table is measured)."""
    if cfg.search.metric == "latency":
        return
    settings = database_settings(cfg)
    table = planned_cost_table(shape, settings, cfg.search.metric)
    make_budget(table, table.full() * target.block_params / planned_cost_table(shape, settings, "params").full())


@watched
def run(cfg: RunConfig, out: str | Path, phase: str = "darwin", force: bool = False, progress: bool = True,
        stop_after: int | None = None) -> Path:
    """Database, search, export and evaluation for `cfg`; resumes an interrupted run in `out`.

    Every check runs before `out` is created or changed, under the run's lock (held by the process
    that writes, for the whole run).

    Args:
        phase: "darwin" (everything), "database" (stop after the database) or "search" (requires
            the database to be built already).
        stop_after: end the search after this many generations in this call (to test resuming).
    """
    out = Path(out)
    check_format_before_work(cfg, searched=phase != "database")
    stages = stages_of(cfg)
    main = init_distributed()[0] == 0  # only the main process writes the run directory
    if phase == "search" and not (out / "database" / "index.json").exists():
        raise UserError(f"no database in {out / 'database'}; run `evoprune database --out {out}` first")
    sizes = family_sizes(cfg, out)
    settings = search_config(sizes[0] if len(sizes) == 1 else cfg)
    if len(sizes) > 1:  # a family: the sizes are not part of it, so that one more size resumes it
        del settings["target"]
    with run_lock(out) if main else contextlib.nullcontext():
        run_dir = ResumableRun(out, "darwin", RUN_MARKER)
        if main:
            run_dir.holds_run(settings, force)
        started = time.time()
        with memory.stage("load model"):  # the database phase only runs the dense model: it may stay mapped
            dense = load_source(cfg, bounded=phase == "database" and choose_bounded(cfg, "database"))
        shape = dense.adapter.shape(dense.model)
        targets = [reachable_target(size, shape, len(sizes) > 1) for size in sizes]
        check_space_fits(cfg.search.space, dense.model.config)
        check_refit_target(cfg.refit.target, dense.adapter)
        if cfg.max_memory_gib is not None:
            check_memory_budget(shape, cfg, cfg.model.device, next(dense.model.parameters()).element_size(),
                                compute_dtype_of(dense.model).itemsize, int(cfg.max_memory_gib * 2**30), phase)
        if main:
            run_dir.start(settings, force)
        if len(sizes) == 1:
            return _database_search_export(out, sizes[0], settings, dense, targets[0], stages, phase, progress and main,
                                           main, stop_after, started)
        return _family(out, sizes, dense, targets, stages, phase, progress and main, main, stop_after)


def family_sizes(cfg: RunConfig, out: Path) -> list[RunConfig]:
    """The run configuration of each size asked for (one, or a family); a family's database is kept once for all
    its sizes, in the store or, with database.store=run, beside them in `out/database-store`."""
    sizes = [dataclasses.replace(cfg, prune=size) for size in cfg.prune.sizes()]
    if len(sizes) > 1 and cfg.database.store == "run":
        store = dataclasses.replace(cfg.database, store=str((out / "database-store").absolute()))
        sizes = [dataclasses.replace(size, database=store) for size in sizes]
    return sizes


def reachable_target(cfg: RunConfig, shape: ModelShape, named: bool) -> Target:
    """The target of `cfg`'s one size, refused before any work when the database cannot reach it."""
    try:
        target = resolve_target(shape, cfg.prune.sparsity, cfg.prune.target_params)
        check_reachable(cfg, shape, target)
    except UserError as e:
        if not named:
            raise
        raise UserError(f"size {size_label(cfg.prune)} of the family: {e}") from None
    return target


def _family(out: Path, sizes: list[RunConfig], dense: LoadedModel, targets: list[Target], stages: list[Stage],
            phase: str, progress: bool, main: bool, stop_after: int | None) -> Path:
    """Each size as a darwin run folder of its own inside `out` (one database, one set of replace-one scores),
    then the front; a size already finished is read, not redone."""
    with main_process_first(), memory.stage("database"):  # the one database of every size
        db = build_database(sizes[0], dense, out / "database", progress)
    if phase == "database":
        if main:
            write_database_memory(out, dense)
        return out
    labels = []
    for cfg, target in zip(sizes, targets):
        label, settings = size_label(cfg.prune), search_config(cfg)
        folder, started = out / label, time.time()
        labels.append(label)
        run_dir = ResumableRun(folder, "darwin", RUN_MARKER)
        if run_dir.holds_run(settings) and (folder / "metrics.json").is_file():  # every process decides alike
            continue
        if main:
            run_dir.start(settings)
        barrier()
        log.info("size %s (%d of %d)", label, len(labels), len(sizes))
        _database_search_export(folder, cfg, settings, dense, target, stages, phase, progress, main, stop_after,
                                started)
        barrier()  # the main process has written this size before any process looks at it
        if not (folder / "metrics.json").is_file():
            return out  # stopped early on request (tests)
    if main:
        sections = []
        if sizes[0].search.predicted_front:
            with memory.stage("predicted front"):
                front = run_predicted_front(sizes[0], dense, db, stages, out / "predicted_front", progress)
            sections.append(("Predicted front", report_section(front, cost_table(db, "params").full(),
                                                               "predicted_front")))
        speeds = llamacpp_speeds(sizes[0], dense.path, out, labels)
        write_front(out, labels, speeds=speeds, sections=sections)
    return out


def run_predicted_front(cfg: RunConfig, dense: LoadedModel, db: Database, stages: list[Stage], folder: Path,
                        progress: bool = True) -> PredictedFront:
    """The MIP's front of `db` from the run's replace-one scores (`predicted_front.py`), in `folder`: its
    `search.predicted_front` measured points scored on the first `search.predicted_front_tokens` of the
    held-out blocks, against the held-out teacher the sizes are evaluated with."""
    evaluator = make_evaluator(cfg, dense, db, stages, progress)
    scores = run_replace_one(cfg, dense, db, evaluator, folder, progress)
    eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
    teacher = teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, cfg.data.batch_size, progress)
    n = min(len(eval_blocks), math.ceil(cfg.search.predicted_front_tokens / cfg.data.seq_len))
    held_out = TeacherSubset(teacher, eval_blocks, list(range(n)))
    return predicted_front(scores.scores, cost_table(db, "params"),
                           lambda g: evaluator.kl(g, held_out.blocks, held_out), folder,
                           {"blocks": tokens_fingerprint(held_out.blocks), "teacher": str(teacher.path)},
                           measured=cfg.search.predicted_front, progress=progress)


def _database_search_export(out: Path, cfg: RunConfig, config: dict, dense: LoadedModel, target: Target,
                            stages: list[Stage], phase: str, progress: bool, main: bool, stop_after: int | None,
                            started: float) -> Path:
    with main_process_first(), memory.stage("database"):
        db = build_database(cfg, dense, out / "database", progress)
    if phase == "database":
        if main:  # what the database command cost, as a whole run's metrics.json says it
            write_database_memory(out, dense)
        return out
    with main_process_first(), memory.stage("cost table"):
        table = search_cost_table(cfg, dense, db, out / "search", progress)
    dense_blocks = cost_table(db, "params").full()
    budget = make_budget(table, table.full() * target.block_params / dense_blocks)
    with main_process_first(), memory.stage("teacher and fitness caches"):
        evaluator = make_evaluator(cfg, dense, db, stages, progress)
    r = cfg.search.resolved()
    start, start_seconds, scoring, spent_scoring = None, 0.0, None, 0.0
    if r["first_parent"] == "mip":
        with main_process_first(), memory.stage("replace-one"):
            scoring_started = time.time()
            start, scoring = mip_parent(cfg, dense, db, table, budget, evaluator, out / "search", progress)
            start_seconds, spent_scoring = scoring.seconds, time.time() - scoring_started
    search_dir = out / "search" if main else _private_copy(out / "search")
    barrier()  # every process has read the saved search state before the main one writes it again
    settings = evolution_settings(cfg, start_seconds)
    try:
        with memory.stage("search"):
            result = evolve(evaluator, table, budget, stages, settings, search_dir, config, progress, stop_after,
                            start)
    finally:
        if not main:
            shutil.rmtree(search_dir, ignore_errors=True)
    if not result.finished(settings) or not main:
        return out  # stopped early on request (tests; rerun to resume), or not the process that writes
    with memory.stage("stitch"):
        spec, replace = db.stitch(list(result.best.attention), list(result.best.mlp), dense.adapter,
                                  meta={"method": "darwin", "source": dense.name, "target": target.description,
                                        "profile": cfg.search.profile, "generations": result.state.generation,
                                        "genotype": result.best.to_dict()})
        spec.meta["target_report"] = target.report(spec.block_params(), dense_blocks)
        pruned = inference_slice(dense.model, dense.adapter, spec, replace)
    refit_record = None
    if cfg.refit.target != "none":
        with memory.stage("re-fit"):
            pruned, replace, refit_record = refit_chosen(cfg, dense, spec, pruned, progress)
    bld_record = None
    if cfg.bld.tokens > 0:
        with memory.stage("blockwise distillation"):
            pruned, replace, bld_record = distill_chosen(cfg, dense, pruned, spec, replace, progress)
    with memory.stage("evaluation"):
        eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
        teacher = teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, cfg.data.batch_size, progress)
        uniform = evaluator.view(uniform_genotype(table, budget))  # the search's starting point, for comparison
        unseen = load_unseen(cfg, dense.tokenizer)
        rows = evaluate_models({"dense": dense.model, "uniform (same database)": uniform, "darwin": pruned},
                               eval_blocks, teacher, cfg.eval, cfg.data.batch_size, progress, unseen=unseen,
                               unchanged=frozenset({"dense"}), heldout_only=frozenset({"uniform (same database)"}))
    with memory.stage("export"):
        del pruned, uniform
        export_sliced(dense.model, dense.adapter, spec, replace, out / "model", tokenizer=dense.tokenizer, force=True)
        spec.save(out / "spec.json")
        served = export_for_serving(out / "model", cfg.export.format, cfg.export.quant, force=True)
    with memory.stage("evaluation"):  # the parents' held-out curve
        parent_kl = parent_kl_curve(evaluator, result.state.history, eval_blocks, teacher, cfg.data.batch_size)
    metrics = {"dense": rows["dense"], "pruned": rows["darwin"],
               "uniform_same_database": rows["uniform (same database)"], "target": spec.meta["target_report"],
               "search": {"generations": result.state.generation, "evaluations": result.state.evaluations,
                          "search_seconds": round(result.state.seconds + spent_scoring, 1),  # in this run
                          "first_parent": r["first_parent"], "profile": cfg.search.profile,
                          "first_parent_check": first_parent_check(result.state.history, start,
                                                                   uniform_genotype(table, budget), stages),
                          "replace_one_seconds": round(start_seconds, 2),  # what scoring took, whichever run
                          "replace_one_reused": bool(scoring and scoring.reused),
                          "parent_heldout_kl": parent_kl},
               "database": {"bytes": db.size_bytes(), "dense_weight_bytes": sum(
                   p.numel() * p.element_size() for p in dense.model.parameters())},
               "wall_time_s": round(time.time() - started, 1), "memory": memory.summary()}
    if refit_record is not None:
        metrics["refit"] = refit_record
    if bld_record is not None:
        metrics["bld"] = bld_record
    if table.metric != "params":
        metrics["budget"] = budget_record(cfg, table, budget, result.best)
    if unseen is not None:
        metrics["unseen_text"] = describe_unseen(unseen)
    if served is not None:
        metrics["serving"] = serving_record(served, out, cfg.export.format, cfg.export.quant)
    write_json(out / "metrics.json", metrics)
    write_text(out / "config.yaml", dump_config(cfg))
    write_darwin_report(out, spec, rows, metrics, result.state.history, unseen)
    return out


def _private_copy(search_dir: Path) -> Path:
    """A temporary copy of the search state for a process that must not write the run directory."""
    copy = Path(tempfile.mkdtemp(prefix="evoprune-search-"))
    if search_dir.is_dir():
        shutil.copytree(search_dir, copy, dirs_exist_ok=True)
    return copy
