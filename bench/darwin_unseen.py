"""DarwinLM search variants judged on text the search never saw, at equal search wall time, one-shot.

    python bench/darwin_unseen.py                                   # 50%, seed 0, every variant
    python bench/darwin_unseen.py --variants default,reference --seeds 1 2
    python bench/darwin_unseen.py --sparsities 0.25 --minutes 15

Every search gets the same wall time (`--minutes`, replace-one scoring included; database, teacher
caches and evaluation not counted) on this machine, one after another. Every winner is measured on
the same blocks: perplexity on the embedded corpus' held-out split (in-distribution for the default
runs), KL to the dense model there, and perplexity on the unseen domains (news, how-to, math; their
geometric mean) and on the held-back Austen text. Rows merge across invocations (files under
results/darwin_unseen_rows/), so seeds and sparsities can be added later. Searches resume.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from evoprune.darwinlm import pipeline as darwin
from evoprune.arch.params import block_params
from evoprune.atomic import write_json, write_text
from evoprune.cli import parse_with_overrides
from evoprune.config import load_config
from evoprune.evaluation.perplexity import mean_nll
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.evaluation.unseen import load_unseen, unseen_metrics
from evoprune.data import data_blocks
from evoprune.models import load_source
from evoprune.obs.calibration import collect_stats
from evoprune.baselines.depth import depth_spec
from evoprune.arch.target import resolve_target
from evoprune.baselines.uniform import uniform_spec
from evoprune.report import markdown_table, plot_bars
from evoprune.levels.budget import make_budget, uniform_genotype
from evoprune.darwinlm.evolution import evolve
from evoprune.levels.genotype import Genotype

# the quick profile until issue 17 (bench/darwin.py's tables were made with it)
OLD_QUICK = ["search.offspring=8", "search.generations=8", "search.train_tokens=[0,2048,4096]",
             "search.fitness_tokens=[1024,2048,4096]", "search.survivors=[4,2,1]", "search.init_samples=16",
             "search.lr=1e-4", "search.first_parent=uniform"]
EVOPRESS_KL = ["search.offspring=16", "search.train_tokens=[0,0,0]", "search.fitness_tokens=[512,1024,2048]",
               "search.survivors=[4,2,1]", "search.init_samples=0", "search.generations=1000"]
# name -> (config file or None, overrides, timed): a timed search runs for --minutes; the others as configured
VARIANTS = {
    "default": ("the quick profile as shipped", None, [], False),
    "mip": ("MIP assembly of replace-one KLs, no evolution", None,
            [*EVOPRESS_KL, "search.first_parent=mip", "search.generations=0"], False),
    "kl-mip": ("evolution KL-only from the MIP parent", None, [*EVOPRESS_KL, "search.first_parent=mip"], True),
    "kl-uniform": ("evolution KL-only from the uniform parent", None,
                   [*EVOPRESS_KL, "search.first_parent=uniform"], True),
    "quick-v1": ("the former quick profile (training-aware, 8 generations)", None, OLD_QUICK, False),
    "reference": ("DarwinLM's settings (the shipped config darwinlm_reference)", "darwinlm_reference",
                  [], True),
}
FIXED_BASELINES = ("uniform (activation)", "depth (ShortGPT)")  # measured once per sparsity
COLUMNS = ["sparsity", "method", "seed", "block_sparsity", "unseen ppl", "news", "howto", "math", "austen (held back)",
           "held-out ppl", "KL", "search s", "generations", "evaluations"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Trailing key=value words are config overrides for every variant.")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure uniform (activation), depth and each database's uniform genotype")
    ap.add_argument("--minutes", type=float, default=15.0, help="search wall time of the timed variants")
    ap.add_argument("--eval-blocks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (e.g. 1 to run two invocations side by side on 2 cores)")
    ap.add_argument("--trajectory", metavar="VARIANT", default=None,
                    help="instead of searching: judge the parents of a finished search of VARIANT (first seed, first "
                         "sparsity) at 5 points of its run, to see whether gains on the fitness data carry to unseen text")
    ap.add_argument("--work", default="results/tmp/darwin_unseen")
    ap.add_argument("--out", default="results")
    args = parse_with_overrides(ap, argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        ap.error(f"--variants takes a comma list of {', '.join(VARIANTS)}, got {args.variants!r}")
    work, out = Path(args.work), Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_config(None, [f"data.eval_blocks={args.eval_blocks}", *args.overrides])
    dense = load_source(base)
    shape = dense.adapter.shape(dense.model)
    measure = Judge(base, dense)
    if args.trajectory:
        return write_trajectory(args.trajectory, args, base, dense, measure)

    if args.baselines and not row_path(out, 0.0, "dense").exists():
        save_row(out, {"sparsity": 0.0, "method": "dense", "seed": "", **measure(dense.model)})
    for sparsity in args.sparsities:
        target = resolve_target(shape, sparsity=sparsity)
        if args.baselines and not all(row_path(out, sparsity, m).exists() for m in FIXED_BASELINES):
            calib = data_blocks(base, dense.tokenizer, "calibration", base.data.calibration_blocks)
            stats = collect_stats(dense.model, dense.adapter, calib, base.data.batch_size)
            heads, neurons = stats.head_energy(dense.adapter, dense.model), stats.neuron_energy(dense.adapter, dense.model)
            for name, spec in zip(FIXED_BASELINES, (uniform_spec(shape, heads, neurons, target),
                                                    depth_spec(shape, stats.block_influence(), target))):
                save_row(out, {"sparsity": sparsity, "method": name, "seed": "",
                               **measure(dense.adapter.slice(dense.model, spec))})
        for variant in variants:
            _, path, overrides, timed = VARIANTS[variant]
            cfg = load_config(path, [f"data.eval_blocks={args.eval_blocks}", *args.overrides, *overrides,
                                     f"prune.sparsity={sparsity}",
                                     *([f"search.max_minutes={args.minutes}"] if timed else [])])
            db = darwin.build_database(cfg, dense, work / f"database-{database_key(cfg)}")
            table = darwin.cost_table(db, "params")
            budget = make_budget(table, target.block_params)
            stages = darwin.stages_of(cfg)
            evaluator = darwin.make_evaluator(cfg, dense, db, stages, progress=True)
            genotype_row = f"uniform genotype, {database_name(cfg)}"
            if args.baselines and not row_path(out, sparsity, genotype_row).exists():
                save_row(out, {"sparsity": sparsity, "method": genotype_row,
                               "seed": "", **measure(evaluator.build(uniform_genotype(table, budget)))})
            for seed in args.seeds:
                cfg.seed = seed
                run_dir = work / f"{variant}-{sparsity:g}-seed{seed}"
                started = time.time()
                start, start_seconds = None, 0.0
                if cfg.search.resolved()["first_parent"] == "mip":
                    start, scoring = darwin.mip_parent(cfg, dense, db, table, budget, evaluator, run_dir)
                    start_seconds = scoring.seconds  # the scoring's cost counts against the search's time
                settings = darwin.evolution_settings(cfg, start_seconds)
                result = evolve(evaluator, table, budget, stages, settings, run_dir, darwin.search_config(cfg),
                                True, None, start)
                row = {"sparsity": sparsity, "method": variant, "seed": seed,
                       "search s": round(result.state.seconds + start_seconds, 1),
                       "generations": result.state.generation, "evaluations": result.state.evaluations,
                       "wall s this call": round(time.time() - started, 1), "genotype": result.best.to_dict(),
                       **measure(evaluator.build(result.best))}
                save_row(out, row)
                print({k: v for k, v in row.items() if k != "genotype"}, flush=True)
    write_report(out, argv)


class Judge:
    """The figures every pruned model of these benches is judged by, on the same blocks: unseen text (per
    domain, their geometric mean, the held-back source) and the embedded held-out split (perplexity, KL)."""

    def __init__(self, cfg, dense):
        self.cfg, self.dense = cfg, dense
        self.eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
        self.teacher = teacher_for(dense.model, str(dense.path), self.eval_blocks, cfg.eval, cfg.data.batch_size)
        self.unseen = load_unseen(cfg, dense.tokenizer)

    def __call__(self, model) -> dict:
        batch = self.cfg.data.batch_size
        m = unseen_metrics(model, self.unseen, batch)
        kept = block_params(self.dense.adapter.shape(model))
        return {"block_sparsity": round(1 - kept / block_params(self.dense.adapter.shape(self.dense.model)), 4),
                "unseen ppl": m["unseen_ppl_mean"], **m["unseen_perplexity"],
                "austen (held back)": m["heldback_perplexity"],
                "held-out ppl": math.exp(mean_nll(model, self.eval_blocks, batch)),
                "KL": kl_to_teacher(model, self.eval_blocks, self.teacher, batch_size=batch)}


def write_trajectory(variant: str, args, base, dense, judge: Judge) -> None:
    """The parent at 5 points of a finished search, judged on held-out and unseen text."""
    sparsity, seed = args.sparsities[0], args.seeds[0]
    _, path, overrides, _ = VARIANTS[variant]
    cfg = load_config(path, [f"data.eval_blocks={args.eval_blocks}", *args.overrides, *overrides])
    db = darwin.build_database(cfg, dense, Path(args.work) / f"database-{database_key(cfg)}")
    history = [json.loads(line) for line in
               (Path(args.work) / f"{variant}-{sparsity:g}-seed{seed}" / "history.jsonl").read_text().splitlines()]
    points = sorted({round(k * (len(history) - 1) / 4) for k in range(5)})
    rows = []
    for k in points:
        h = history[k]
        genes = Genotype.from_dict(h["parent"])
        model = dense.adapter.slice(dense.model, *db.stitch(list(genes.attention), list(genes.mlp), dense.adapter))
        rows.append({"generation": h.get("generation", 0), "search s": h.get("seconds"),
                     "fitness KL (its own draw)": h["fitness"][-1], **judge(model)})
        print(rows[-1], flush=True)
    out = Path(args.out)
    write_json(out / f"darwin_unseen_trajectory-{variant}.json", rows)
    write_text(out / f"darwin_unseen_trajectory-{variant}.md",
               f"# The parent along a search ({variant}, {sparsity:.0%}, seed {seed})\n\nCommand: `python bench/"
               f"darwin_unseen.py --trajectory {variant} --sparsities {sparsity:g} --seeds {seed}`\n\n" +
               markdown_table(rows, ["generation", "search s", "fitness KL (its own draw)", "KL", "held-out ppl",
                                     "unseen ppl", "news", "howto", "math", "austen (held back)"]))


def database_key(cfg) -> str:
    d = darwin.database_settings(cfg)
    key = f"{d.calibration}-{d.attention_units}-{d.percdamp:g}-{d.num_levels}"
    if d.storage_dtype != "model":
        key += f"-{d.storage_dtype}"
    return key.replace("|", "_").replace("/", "_")


def database_name(cfg) -> str:
    d = cfg.database
    return (f"{cfg.data.source} x{cfg.data.calibration_blocks}, {d.attention_units}, damp {d.percdamp:g}")


def row_path(out: Path, sparsity: float, method: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in method)
    return out / "darwin_unseen_rows" / f"{sparsity:g}-{slug}.json"  # a file per method: runs side by side


def save_row(out: Path, row: dict) -> None:
    path = row_path(out, row["sparsity"], row["method"])
    rows = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in rows if (r["method"], r["seed"]) != (row["method"], row["seed"])] + [row]
    write_json(path, rows)


def write_report(out: Path, argv: list[str]) -> None:
    rows = [r for p in sorted((out / "darwin_unseen_rows").glob("*.json")) for r in json.loads(p.read_text())]
    order = ["uniform (activation)", "depth (ShortGPT)"]
    rows.sort(key=lambda r: (r["sparsity"], r["method"] not in order and not r["method"].startswith("uniform"),
                             order.index(r["method"]) if r["method"] in order else 9, r["method"], str(r["seed"])))
    summary = seed_summary(rows)
    write_json(out / "darwin_unseen.json", {"rows": rows, "summary": summary})
    for sparsity in sorted({r["sparsity"] for r in summary} - {0.0}):
        by_label: dict[str, list[float]] = {}
        for r in sorted(rows, key=lambda r: PLOT_ORDER.index(label(r["method"])) if label(r["method"]) in PLOT_ORDER
                        else len(PLOT_ORDER)):
            if r["sparsity"] in (0.0, sparsity):
                by_label.setdefault(label(r["method"]), []).append(math.log(r["unseen ppl"]))
        plot_bars({k: math.exp(sum(v) / len(v)) for k, v in by_label.items()},
                  f"One-shot, {sparsity:.0%} of block parameters removed (geometric mean over seeds)",
                  "perplexity on news, how-to, math", out / f"darwin_unseen_{sparsity:g}.png", log=True, size=(8, 4.2))
    text = (f"# DarwinLM variants on unseen text\n\nCommand of the last run: `python bench/darwin_unseen.py "
            f"{' '.join(argv)}` (rows of other seeds and sparsities come from earlier runs).\n\n"
            "Variants:\n\n" + "".join(f"- `{k}`: {v[0]}\n" for k, v in VARIANTS.items()) +
            "\n## Mean over seeds\n\n" + markdown_table(summary, ["sparsity", "method", "seeds", *COLUMNS[4:]]) +
            "\n## Every run\n\n" + markdown_table(rows, COLUMNS))
    write_text(out / "darwin_unseen.md", text)
    print(text)


LABELS = {"uniform (activation)": "uniform, activation", "depth (ShortGPT)": "depth (ShortGPT)",
          "mip": "quick (MIP)", "kl-mip": "MIP + 6 generations", "default": "quick (MIP)",
          "kl-uniform": "evolution from uniform", "quick-v1": "former quick", "reference": "DarwinLM settings"}
PLOT_ORDER = ["dense", "uniform, activation", "depth (ShortGPT)", "uniform shape, DarwinLM db", "uniform shape, evoprune db",
              "DarwinLM settings", "former quick", "evolution from uniform", "MIP + 6 generations", "quick (MIP)"]


def label(method: str) -> str:
    """A short name for plots."""
    if method.startswith("uniform genotype"):
        return "uniform shape, " + ("DarwinLM db" if "boolq" in method else "evoprune db")
    return LABELS.get(method, method)


def seed_summary(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["sparsity"], r["method"]), []).append(r)
    summary = []
    for (sparsity, method), runs in groups.items():
        line = {"sparsity": sparsity, "method": method, "seeds": len(runs)}
        for col in COLUMNS[4:]:
            values = [r[col] for r in runs if isinstance(r.get(col), (int, float))]
            if values:
                line[col] = sum(values) / len(values) if col != "unseen ppl" else math.exp(
                    sum(map(math.log, values)) / len(values))
        summary.append(line)
    return summary


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
