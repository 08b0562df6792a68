"""DarwinLM against the baselines at several sparsities, one-shot and after an equal short recovery.

    python bench/darwin.py                     # SmolLM2-135M, 25% and 50%, writes results/darwin.*
    python bench/darwin.py --sparsities 0.5 --seeds 1 2    # more seeds of the three searches; the table
                                               # gains a mean (min-max) over the seeds present
    python bench/darwin.py --sparsities 0.5 --seeds 1 --parts ta,random   # only some of the methods

The searches use the quick profile as it was when these tables were made (training-aware, 8 offspring,
init_samples 16; `OLD_QUICK` in darwin_unseen.py), not today's quick profile.

Methods: uniform (activation ranking), uniform (OBS database, same level everywhere), depth
(ShortGPT), evolution with KL-only selection, evolution with training-aware selection (quick
profile), and random search with as many candidate evaluations as the training-aware search
(random genotypes inside the budget, through the same KL stages).
All share one database, one set of calibration / training / held-out blocks, and the same
recovery budget. Also reports database build time and size, search wall time, and candidate
evaluations per second against one forward pass of the candidate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from darwin_unseen import OLD_QUICK
from evoprune.darwinlm import pipeline as darwin
from evoprune.arch.params import block_params
from evoprune.atomic import write_json, write_text
from evoprune.cli import parse_with_overrides
from evoprune.config import load_config
from evoprune.evaluation.perplexity import mean_nll
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.evaluation.unseen import describe_unseen, load_unseen, unseen_metrics
from evoprune.data import data_blocks
from evoprune.models import load_source
from evoprune.obs.calibration import collect_stats
from evoprune.baselines.depth import depth_spec
from evoprune.arch.target import resolve_target
from evoprune.baselines.uniform import uniform_spec
from evoprune.report import markdown_table
from evoprune.levels.budget import make_budget, uniform_genotype
from evoprune.darwinlm.evolution import evolve
from evoprune.darwinlm.fitness import Stage
from evoprune.darwinlm.random_search import random_search
from evoprune.training import TrainConfig, train_on_blocks


PARTS = ("baselines", "kl", "ta", "random")
RECOVERY_FIRST_BLOCK = 32  # recovery trains on train blocks 32-63; the searches' brief training stays below
SEARCH_PARTS = {"evolution, KL-only": "kl", "evolution, training-aware": "ta", "random search": "random"}
SUMMARY_COLUMNS = ["ppl one-shot", "unseen ppl one-shot", "held-back ppl one-shot", "KL one-shot", "ppl recovered",
                   "unseen ppl recovered", "held-back ppl recovered", "KL recovered"]
METHOD_ORDER = ["uniform (activation)", "uniform (OBS database)", "depth (ShortGPT)", *SEARCH_PARTS]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Trailing key=value words are config overrides (e.g. model.source=DIR).")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="search seeds (seed 0's winners feed bench/compare.py)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma list of {', '.join(PARTS)} (random search takes ta's number of evaluations)")
    ap.add_argument("--eval-blocks", type=int, default=16)
    ap.add_argument("--recovery-tokens", type=int, default=8192)
    ap.add_argument("--recovery-lr", type=float, default=1e-4)
    ap.add_argument("--recovery-loss", choices=["lm", "kd", "lm+kd"], default="lm+kd",
                    help="recovery objective (kd: distillation from the dense model, online)")
    ap.add_argument("--work", default="results/tmp/darwin")
    ap.add_argument("--out", default="results")
    args = parse_with_overrides(ap, argv)
    overrides = args.overrides
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        ap.error("--seeds must be distinct and non-negative")
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not parts or any(x not in PARTS for x in parts):
        ap.error(f"--parts takes a comma list of {', '.join(PARTS)}, got {args.parts!r}")
    if "random" in parts and "ta" not in parts:
        ap.error("--parts random needs ta: random search makes as many evaluations as the training-aware search")

    work = Path(args.work)
    cfg = load_config(None, [*OLD_QUICK, f"data.eval_blocks={args.eval_blocks}",
                             f"search.generations={args.generations}", *overrides])
    if cfg.search.train_pool > RECOVERY_FIRST_BLOCK:
        ap.error(f"search.train_pool={cfg.search.train_pool}: more than {RECOVERY_FIRST_BLOCK} blocks would train "
                 "the selections on the recovery's blocks")
    dense = load_source(cfg)
    shape = dense.adapter.shape(dense.model)
    t0 = time.time()
    built_here = not (work / "database" / "index.json").exists()
    db = darwin.build_database(cfg, dense, work / "database")
    if built_here or not (work / "db_seconds.json").exists():  # a reused database keeps its recorded build time
        write_json(work / "db_seconds.json", {"seconds": time.time() - t0, "built_here": built_here})
    db_seconds = json.loads((work / "db_seconds.json").read_text())["seconds"]
    params_table = darwin.cost_table(db, "params")
    eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
    teacher = teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, cfg.data.batch_size)
    calib = data_blocks(cfg, dense.tokenizer, "calibration", cfg.data.calibration_blocks)
    stats = collect_stats(dense.model, dense.adapter, calib, cfg.data.batch_size)
    recovery_blocks = data_blocks(cfg, dense.tokenizer, "train", 64)[RECOVERY_FIRST_BLOCK:]  # not the search's
    unseen = load_unseen(cfg, dense.tokenizer)

    def unseen_columns(model, when: str) -> dict:
        """Unseen-text figures of `model` ("one-shot" or "recovered"): their mean, held back, and per domain."""
        if unseen is None:
            return {}
        m = unseen_metrics(model, unseen, cfg.data.batch_size)
        return {f"unseen ppl {when}": m["unseen_ppl_mean"], f"held-back ppl {when}": m["heldback_perplexity"],
                f"unseen {when}": m["unseen_perplexity"]}

    ta_stages = darwin.stages_of(cfg)
    kl_stages = [Stage(0, s.fitness_tokens, s.survivors) for s in ta_stages]
    evaluator = darwin.make_evaluator(cfg, dense, db, ta_stages, progress=True)
    r = cfg.search.resolved()
    settings = darwin.evolution_settings(cfg)

    def measure(models: dict, sparsity: float, seed: int | str, part: str) -> None:
        """One-shot and recovered figures of `models`, written to darwin_rows/<part>.json."""
        rows = []
        for name, model in models.items():
            kept = block_params(dense.adapter.shape(model))
            row = {"sparsity": sparsity, "method": name, "seed": seed,
                   "block_sparsity": round(1 - kept / params_table.full(), 4)}
            row["ppl one-shot"] = float(torch.tensor(mean_nll(model, eval_blocks, cfg.data.batch_size)).exp())
            row["KL one-shot"] = kl_to_teacher(model, eval_blocks, teacher, batch_size=cfg.data.batch_size)
            row.update(unseen_columns(model, "one-shot"))
            train_on_blocks(model, recovery_blocks, args.recovery_tokens,
                            TrainConfig(lr=args.recovery_lr, seed=0, loss=args.recovery_loss),
                            teacher=dense.model if args.recovery_loss != "lm" else None)
            row["ppl recovered"] = float(torch.tensor(mean_nll(model, eval_blocks, cfg.data.batch_size)).exp())
            row["KL recovered"] = kl_to_teacher(model, eval_blocks, teacher, batch_size=cfg.data.batch_size)
            row.update(unseen_columns(model, "recovered"))
            rows.append(row)
            print(row, flush=True)
        # one file per sparsity and part, merged with what earlier invocations measured there (other methods)
        path = Path(args.out) / "darwin_rows" / f"{part}.json"
        saved = json.loads(path.read_text()) if path.exists() else {"rows": [], "timing": {}}
        merged = {r["method"]: r for r in saved["rows"]} | {r["method"]: r for r in rows}
        write_json(path, {"rows": sorted(merged.values(), key=lambda r: method_rank(r["method"])),
                          "timing": saved["timing"] | {k: v for k, v in timing.items() if k.endswith(f"@ {part}")}})

    timing = {}
    for sparsity in args.sparsities:
        target = resolve_target(shape, sparsity=sparsity)
        budget = make_budget(params_table, target.block_params)
        if "baselines" in parts:
            measure({  # deterministic: the same for every seed
                "uniform (activation)": dense.adapter.slice(dense.model, uniform_spec(
                    shape, stats.head_energy(dense.adapter, dense.model), stats.neuron_energy(dense.adapter, dense.model),
                    target)),
                "uniform (OBS database)": evaluator.build(uniform_genotype(params_table, budget)),
                "depth (ShortGPT)": dense.adapter.slice(dense.model, depth_spec(shape, stats.block_influence(), target)),
            }, sparsity, "", f"{sparsity:g}-baselines")
        for seed in args.seeds:
            tag, suffix = f"{sparsity:g}-seed{seed}", f"-seed{seed}" if seed else ""  # seed 0: earlier runs' names
            models, winners = {}, {}
            seeded = dataclasses.replace(settings, seed=seed)
            for name, stages in (("evolution, KL-only", kl_stages), ("evolution, training-aware", ta_stages)):
                if SEARCH_PARTS[name] not in parts:
                    continue
                evaluator.evaluations = 0
                started = time.time()
                state_config = {"sparsity": sparsity, "stages": [dataclasses.astuple(s) for s in stages],
                                "settings": dataclasses.asdict(seeded)}
                if any(s.train_tokens for s in stages):
                    state_config["lr"] = r["lr"]
                    if cfg.search.train_loss != "lm":  # earlier states (lm) keep resuming
                        state_config["train_loss"] = cfg.search.train_loss
                    if cfg.search.train_pool:
                        state_config["train_pool"] = cfg.search.train_pool
                training_aware = stages is ta_stages
                kind = name.split(",")[1].strip() + (variant_suffix(cfg) if training_aware else "")
                result = evolve(evaluator, params_table, budget, stages, seeded,
                                work / f"{kind}-{sparsity:g}{suffix}", state_config, progress=True)
                label = row_name(name, training_aware, cfg)
                timing[f"{label} @ {tag}"] = {"seconds": round(result.state.seconds, 1),
                                             "evaluations": result.state.evaluations,
                                             "wall_s_this_call": round(time.time() - started, 1)}
                models[label] = evaluator.build(result.best)
                if training_aware:
                    ta_evaluations = result.state.evaluations
                winners[name] = {"genotype": result.best.to_dict(), "evaluations": result.state.evaluations,
                                 "search_s": round(result.state.seconds, 1)}
            if "random" in parts:  # as many KL evaluations as the training-aware search, through the KL-only stages
                searched = random_search(evaluator, params_table, budget, kl_stages,
                                         ta_evaluations, seed=seed, walk=settings.init_walk, trade=settings.trade)
                timing[f"random search @ {tag}"] = {"seconds": round(searched.seconds, 1),
                                                    "evaluations": searched.evaluations}
                models["random search"] = evaluator.build(searched.best)
                winners["random search"] = {"genotype": searched.best.to_dict(), "evaluations": searched.evaluations,
                                            "search_s": round(searched.seconds, 1)}
            # bench/compare.py --darwin-bench exports these instead of searching (the lm variant's only)
            if not seed and len(winners) == 3 and not variant_suffix(cfg):
                write_json(work / f"winners-{sparsity:g}.json",
                           {"identity": darwin.search_identity(cfg), "winners": winners})
            measure(models, sparsity, seed, tag)

    probe = evaluator.build(uniform_genotype(params_table, make_budget(params_table, params_table.full() * 0.5)))
    t = time.time()
    for _ in range(3):
        kl_to_teacher(probe, evaluator.stage_blocks[0], evaluator.stage_teachers[0])
    forward = (time.time() - t) / 3
    t = time.time()
    for _ in range(3):
        kl_to_teacher(evaluator.build(uniform_genotype(params_table, make_budget(params_table, params_table.full() * 0.5))),
                      evaluator.stage_blocks[0], evaluator.stage_teachers[0])
    stitched = (time.time() - t) / 3
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.model.parameters())
    setup = {"database_seconds": round(db_seconds, 1), "database_mb": round(db.size_bytes() / 2**20, 1),
             "database_vs_dense_weights": round(db.size_bytes() / dense_bytes, 3),
             "first_stage_eval_s_forward_only": round(forward, 3), "first_stage_eval_s_with_stitching": round(stitched, 3),
             "timing": timing, "eval_tokens": int(eval_blocks.numel()), "recovery_tokens": args.recovery_tokens,
             "recovery_lr": args.recovery_lr, "recovery_loss": args.recovery_loss, "profile": r,
             "unseen_text": describe_unseen(unseen) if unseen is not None else None}
    rows = []
    for part in sorted((Path(args.out) / "darwin_rows").glob("*.json"), key=_sparsity_and_seed):
        saved = json.loads(part.read_text())
        rows += saved["rows"]
        timing.update(saved["timing"])
    write_json(Path(args.out) / "darwin.json", {"setup": setup, "rows": rows})
    cols = ["sparsity", "method", "seed", "block_sparsity", "ppl one-shot", "unseen ppl one-shot",
            "held-back ppl one-shot", "KL one-shot", "ppl recovered", "unseen ppl recovered", "held-back ppl recovered",
            "KL recovered"]
    text = (f"# DarwinLM vs baselines\n\nCommand of the last run: `python bench/darwin.py {' '.join(argv)}` (rows "
            "of other sparsities and seeds come from earlier runs)\n\n" + markdown_table(rows, cols) +
            _seed_summary(rows) + "\n## Setup and costs\n\n```json\n" + json.dumps(setup, indent=2) + "\n```\n")
    write_text(Path(args.out) / "darwin.md", text)
    print(text)


def method_rank(method: str) -> tuple[int, str]:
    """Table order: METHOD_ORDER, a training-aware variant right after the default training-aware search."""
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method), ""
    return METHOD_ORDER.index("evolution, training-aware"), method


def brief_training_variant(cfg) -> list[tuple[str, str]]:
    """How the training-aware search's brief training differs from the default (LM loss, fixed blocks):
    (row tag, state-directory tag) pairs, e.g. [("brief lm+kd", "lm+kd"), ("train pool 32", "pool32")]."""
    variant = [(f"brief {cfg.search.train_loss}", cfg.search.train_loss)] if cfg.search.train_loss != "lm" else []
    return variant + ([(f"train pool {cfg.search.train_pool}", f"pool{cfg.search.train_pool}")]
                      if cfg.search.train_pool else [])


def variant_suffix(cfg) -> str:
    """The training-aware state directory's suffix: "" by default, else e.g. "-lm+kd-pool32"."""
    return "".join(f"-{tag}" for _, tag in brief_training_variant(cfg))


def row_name(search: str, training_aware: bool, cfg) -> str:
    """The table's name of a search: the training-aware one names how its brief training differs."""
    tags = [tag for tag, _ in brief_training_variant(cfg)] if training_aware else []
    return f"{search} ({', '.join(tags)})" if tags else search


def _sparsity_and_seed(part: Path) -> tuple[float, int]:
    """darwin_rows/<sparsity>-baselines.json first, then <sparsity>-seed<n>.json in seed order."""
    sparsity, _, which = part.stem.partition("-")
    return float(sparsity), -1 if which == "baselines" else int(which.removeprefix("seed"))


def _seed_summary(rows: list[dict]) -> str:
    """Mean and range over seeds of each search, where a search ran with more than one seed."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["seed"] != "":
            groups.setdefault((row["sparsity"], row["method"]), []).append(row)
    summary = []
    for (sparsity, method), runs in groups.items():
        if len(runs) < 2:
            continue
        line = {"sparsity": sparsity, "method": method, "seeds": len(runs)}
        for col in SUMMARY_COLUMNS:
            values = [r[col] for r in runs if r.get(col) is not None]
            if values:
                line[col] = f"{sum(values) / len(values):.4g} ({min(values):.4g}-{max(values):.4g})"
        summary.append(line)
    if not summary:
        return ""
    return ("\n## Searches over seeds: mean (min-max)\n\n" +
            markdown_table(summary, ["sparsity", "method", "seeds", *SUMMARY_COLUMNS]))


if __name__ == "__main__":
    main()
