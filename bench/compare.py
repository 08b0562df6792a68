"""The headline comparison: every pruning method at the same parameter budgets, measured side by side.

    python bench/compare.py                                   # SmolLM2-135M, 25% and 50%: results/compare.*
    python bench/compare.py --sparsities 0.5 --methods dense,uniform,depth --limit 5 --eval-blocks 2 \\
        --work /tmp/cmp --out /tmp/cmp-out data.calibration_blocks=4 search.generations=1   # a smoke run

Rows: dense; uniform; depth (ShortGPT); DarwinLM with KL-only and with training-aware selection
(quick profile); random search over the DarwinLM database with as many candidate evaluations as
the training-aware search; the NAS (kl, params) Pareto pick with the least KL within the same
total parameters. Columns: parameters, block sparsity, held-out perplexity, KL to the dense
model, each `--tasks` task's main metric (lm-eval, offline) and their mean, prefill and decode
speedup over dense against the ideal (FLOP) ratio.

Each method's model is built once into --work (see compare_methods.py) and reused on a rerun, and
each model's quality figures are cached there too; latency is measured on every run, all models
in one interleaved run. A method that cannot be built is listed as missing. Trailing `key=value`
words are config overrides for every build and for the evaluation (e.g. search.generations=1,
eval.latency_batch_sizes=[1,4] for a latency sweep beside the table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compare_methods import METHODS, MethodBuilder, NasSettings
from compare_report import headline_table, plot_against_params, plot_speedups
from evoprune.atomic import write_json, write_text
from evoprune.cli import parse_with_overrides
from evoprune.whittle.arguments import fraction_range
from evoprune.config import RunConfig, load_config
from evoprune.errors import UserError
from evoprune.evaluation.harness import run_tasks
from evoprune.evaluation.latency import compare_latency
from evoprune.evaluation.latency_sweep import sweep_latency, sweep_rows
from evoprune.evaluation.perplexity import mean_nll
from evoprune.evaluation.suite import size_row, teacher_for
from evoprune.evaluation.sweep_report import sweep_section
from evoprune.evaluation.tasks import resolve_tasks, task_configs_dir
from evoprune.evaluation.teacher import TeacherCache, kl_to_teacher
from evoprune.evaluation.unseen import describe_unseen, load_unseen, unseen_metrics
from evoprune.data import data_blocks
from evoprune.models import load_source

log = logging.getLogger("compare")

METHOD_NOTES = """All models are one-shot (no recovery training). uniform keeps the same whole KV groups and MLP width
fraction in every layer (activation ranking); depth removes whole layers (ShortGPT block influence).
DarwinLM runs use one shared second-order database; KL-only is the quick profile with no training
in any selection stage, training-aware the quick profile itself. Random search scores random
genotypes of the same database through the KL-only stages, as many candidate evaluations as the
training-aware search made. The NAS row is the (kl, params) Pareto-front member with the least KL
within the same total parameters, from one study (local search by default, over sub-networks with
40-100% of the dense parameters, no supernet); its objective scores KL on eval-split blocks that
the held-out figures here do not use. Speedups are over dense, measured in one interleaved latency run; the
ideal speedup is the ratio of forward FLOPs per token. Task columns hold each task's main metric
(acc or acc_norm).
"""


@dataclass
class Entry:
    """One row: a method at a sparsity, with its model when it could be built."""

    key: str
    method: str
    sparsity: float
    model: torch.nn.Module | None = None
    model_dir: Path | None = None
    notes: dict = field(default_factory=dict)
    missing: str = ""


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5],
                    help="fractions of transformer-block parameters removed")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma list of {', '.join(METHODS)} (dense is always measured: it is the reference)")
    ap.add_argument("--tasks", default="quick", help="lm-eval task preset or comma list, offline; 'none' to skip")
    ap.add_argument("--limit", type=int, default=100, help="examples per task")
    ap.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks for perplexity and KL")
    ap.add_argument("--nas-trials", type=int, default=150, help="completed trials of the NAS study (all sparsities)")
    ap.add_argument("--nas-blocks", type=int, default=4,
                    help="eval-split blocks the NAS objective scores (the held-out blocks come after them)")
    ap.add_argument("--nas-sampler", choices=["random", "nsga2", "local"], default="local",
                    help="the NAS study's sampler (bench/nas.py: local search leads at 25%% and is second at 50%%)")
    ap.add_argument("--nas-params-range", default="0.4,1",
                    help="LOW,HIGH: the fraction of the dense parameters the NAS study searches; 'all' for every size")
    ap.add_argument("--darwin-bench", default=None,
                    help="a bench/darwin.py work directory (e.g. results/tmp/darwin): export its KL-only, "
                         "training-aware and random-search winners instead of searching again")
    ap.add_argument("--work", default="results/tmp/compare", help="where the built models and caches live")
    ap.add_argument("--out", default="results", help="where compare.md, compare.json and the plots go")
    args = parse_with_overrides(ap, argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if any(not 0 < s < 1 for s in args.sparsities):
        ap.error("--sparsities must be strictly between 0 and 1")
    for name in ("limit", "eval_blocks", "nas_trials", "nas_blocks"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    try:
        args.nas_params_range = None if args.nas_params_range == "all" else \
            fraction_range(args.nas_params_range, "--nas-params-range")
    except UserError as e:
        ap.error(str(e))
    if args.nas_params_range and not 0 <= args.nas_params_range[0] < args.nas_params_range[1]:
        ap.error(f"--nas-params-range needs 0 <= LOW < HIGH, got {args.nas_params_range}")
    return args


def _range_text(params_range: tuple[float, float] | None) -> str:
    return f"{params_range[0]:g}-{params_range[1]:g} of the dense parameters" if params_range else "all"


def build_entries(args: argparse.Namespace, cfg: RunConfig, dense, builder: MethodBuilder) -> list[Entry]:
    entries = [Entry("dense", "dense", 0.0, dense.model, dense.path)]
    for sparsity in args.sparsities:
        for method in [m for m in METHODS if m in args.methods and m != "dense"]:
            entry = Entry(f"{method}-{sparsity:g}", METHODS[method], sparsity)
            started = time.time()
            try:
                built = builder.build(method, sparsity)
                entry.model = load_source(cfg, str(built.model_dir)).model
                entry.model_dir, entry.notes = built.model_dir, {**built.notes, "build_s_this_run": round(
                    time.time() - started, 1)}
            except Exception as e:  # noqa: BLE001 - a method that cannot be built is reported, never faked
                log.exception("%s could not be built", entry.key)
                entry.missing = f"missing: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            entries.append(entry)
    return entries


def folder_fingerprint(folder: Path) -> str:
    """Changes whenever a file of the checkpoint is rewritten (a rebuilt model is evaluated again)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = f.stat()
        h.update(f"{f.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def quality(entry: Entry, tokenizer, held_out: torch.Tensor, teacher: TeacherCache, args, cfg: RunConfig,
            cache_dir: Path, unseen: list | None = None) -> dict:
    """Size, perplexity (held-out and unseen text), KL and task scores of one model, cached in `cache_dir`
    per model and settings."""
    settings = {"model": folder_fingerprint(entry.model_dir), "held_out": [args.nas_blocks, args.eval_blocks],
                "data": [cfg.data.source, cfg.data.seq_len], "tasks": args.tasks, "limit": args.limit,
                "top_k": cfg.eval.top_k, "seed": cfg.seed,
                "unseen": None if unseen is None else {name: d["tokens"] for name, d in describe_unseen(unseen).items()}}
    cache = cache_dir / f"{entry.key}.json"
    if cache.exists() and json.loads(cache.read_text())["settings"] == settings:
        return json.loads(cache.read_text())["metrics"]
    started = time.time()
    metrics = size_row(entry.model)
    metrics["perplexity"] = float(torch.tensor(mean_nll(entry.model, held_out, cfg.data.batch_size)).exp())
    metrics["kl_to_dense"] = kl_to_teacher(entry.model, held_out, teacher, batch_size=cfg.data.batch_size)
    if unseen is not None:
        metrics.update(unseen_metrics(entry.model, unseen, cfg.data.batch_size))
    metrics["tasks"] = {}
    if args.tasks != "none":
        scores = run_tasks(entry.model, tokenizer, args.tasks, args.limit, seed=cfg.seed)
        metrics["tasks"] = {t: m.get(m["main_metric"]) for t, m in scores.items() if t != "average"}
        metrics["task_average"] = scores["average"]["main_metric_mean"]
        metrics["task_s"] = scores["average"]["seconds"]
    metrics["quality_s"] = round(time.time() - started, 1)
    write_json(cache, {"settings": settings, "metrics": metrics})
    return metrics


def note(entry: Entry) -> str:
    n = entry.notes
    if "pick" in n:
        return f"{n['pick']} on the front of {n['trials']} {n.get('sampler', 'nsga2')} trials"
    if "evaluations" in n:
        return f"{n['evaluations']} candidate evaluations, {n['search_s']:.0f} s"
    return ""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.time()
    work, out = Path(args.work), Path(args.out)
    if args.tasks != "none":  # unknown tasks or missing task data fail before anything is built
        resolve_tasks(args.tasks)
        task_configs_dir()
    cfg = load_config(None, args.overrides + ["model.trust_remote_code=true"])  # exported pruned models ship code
    dense = load_source(cfg)
    nas = NasSettings(args.nas_trials, args.nas_blocks, args.nas_sampler, args.nas_params_range)
    builder = MethodBuilder(dense, args.overrides, work, nas,
                            darwin_bench=args.darwin_bench)
    entries = build_entries(args, cfg, dense, builder)
    built_s = time.time() - started

    held_out = data_blocks(cfg, dense.tokenizer, "eval", args.nas_blocks + args.eval_blocks)[args.nas_blocks:]
    if len(held_out) < args.eval_blocks:
        raise UserError(f"the eval split has only {len(held_out) + args.nas_blocks} blocks of {cfg.data.seq_len} "
                        f"tokens; lower --eval-blocks or --nas-blocks")
    teacher = teacher_for(dense.model, str(dense.path), held_out, cfg.eval, cfg.data.batch_size)
    unseen = load_unseen(cfg, dense.tokenizer)
    present = [e for e in entries if e.model is not None]
    rows = {}
    for e in present:
        log.info("evaluating %s", e.key)
        rows[e.key] = quality(e, dense.tokenizer, held_out, teacher, args, cfg, work / "eval", unseen)
    dense_row = rows["dense"]
    for row in rows.values():
        row["block_sparsity"] = 1 - row["block_params"] / dense_row["block_params"]
        row["ideal_speedup"] = dense_row["flops_per_token"] / row["flops_per_token"]

    models = {e.key: e.model for e in present}
    ev = cfg.eval
    if ev.latency:
        results = compare_latency(models, batch_size=ev.batch_size, prompt_len=ev.prompt_len,
                                  new_tokens=ev.new_tokens, warmup=ev.warmup, repeats=ev.repeats, progress=True)
        for key, r in results.items():
            rows[key].update(prefill_tokens_per_s=r.prefill_tokens_per_s, decode_tokens_per_s=r.decode_tokens_per_s,
                             prefill_speedup=r.prefill_tokens_per_s / results["dense"].prefill_tokens_per_s,
                             decode_speedup=r.decode_tokens_per_s / results["dense"].decode_tokens_per_s,
                             weights_bytes=r.weights_bytes, kv_cache_bytes=r.kv_cache_bytes)
    grid = ev.sweep_grid() if ev.latency else None
    sweep = sweep_rows(sweep_latency(models, *grid, new_tokens=ev.new_tokens, warmup=ev.warmup, repeats=ev.repeats,
                                     progress=True)) if grid else None

    table_rows = [{"key": e.key, "method": e.method, "sparsity": e.sparsity,
                   "status": e.missing or "ok", "note": note(e), **e.notes, **rows.get(e.key, {})} for e in entries]
    tasks = list(dense_row["tasks"])
    write_outputs(out, args, cfg, table_rows, tasks, sweep, {name: r["ideal_speedup"] for name, r in rows.items()},
                  {"held_out_tokens": int(held_out.numel()), "build_s": round(built_s),
                   "wall_s": round(time.time() - started)}, describe_unseen(unseen) if unseen is not None else None)


def write_outputs(out: Path, args, cfg: RunConfig, rows: list[dict], tasks: list[str], sweep: list[dict] | None,
                  ideal: dict[str, float], timing: dict, unseen: dict | None = None) -> None:
    ev = cfg.eval
    setup = {"command": "python bench/compare.py " + " ".join(args.argv), "model": cfg.model.source,
             "held_out": f"{args.eval_blocks} blocks of {cfg.data.seq_len} tokens of the {cfg.data.source} eval split, "
                         f"after the {args.nas_blocks} the NAS objective scores",
             "kl": f"against the dense model's top-{ev.top_k} distribution",
             "unseen": "not measured (eval.unseen=false)" if unseen is None else "; ".join(
                 f"{name} ({d.get('split') or ('test' if d.get('heldback') else 'dev')}): "
                 f"{d['tokens']} tokens of {d['origin']}"
                 for name, d in unseen.items()),
             "tasks": f"{args.tasks}, at most {args.limit} examples each (lm-eval, offline copies)",
             "latency": f"batch {ev.batch_size}, prompt {ev.prompt_len}, {ev.new_tokens} decode steps, median of "
                        f"{ev.repeats} after {ev.warmup} warm-up rounds, all models interleaved in one run"
                        if ev.latency else "not measured",
             "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                        f"torch {torch.__version__}", "overrides": args.overrides, "nas_trials": args.nas_trials,
             "nas_sampler": args.nas_sampler, "nas_params_range": _range_text(args.nas_params_range), **timing}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", {"setup": setup, "rows": rows, "latency_sweep": sweep, "unseen_text": unseen})
    ok = [r for r in rows if r["status"] == "ok"]
    plot_against_params(ok, "perplexity", "held-out perplexity (log scale)", "perplexity vs size",
                        out / "compare_perplexity.png", log=True)
    plots = "![perplexity](compare_perplexity.png)\n"
    if unseen is not None:
        plot_against_params(ok, "unseen_ppl_mean", "unseen-text perplexity, geometric mean (log scale)",
                            "unseen text vs size", out / "compare_unseen.png", log=True)
        plots += "![unseen text](compare_unseen.png)\n"
    if tasks:
        plot_against_params(ok, "task_average", "mean task accuracy", "tasks vs size", out / "compare_tasks.png")
        plots += "![tasks](compare_tasks.png)\n"
    if ev.latency:
        plot_speedups(ok, out / "compare_speedup.png")
        plots += "![speedup](compare_speedup.png)\n"
    text = ("# Pruning methods compared\n\n" + "".join(f"- {k}: {v}\n" for k, v in setup.items() if k != "command")
            + f"\nCommand: `{setup['command']}`\n\n" + headline_table(rows, tasks) + "\n" + METHOD_NOTES + "\n"
            + plots)
    if sweep:
        text += "\n## Latency sweep\n\n" + sweep_section(sweep, ideal, out / "compare_sweep.png", ev.new_tokens,
                                                          ev.repeats, ev.warmup)
    write_text(out / "compare.md", text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        sys.exit(2)
