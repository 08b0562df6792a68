"""Sub-network search methods at one evaluation budget: Pareto fronts of KL to the dense model vs parameters.

    python bench/nas.py                               # SmolLM2-135M, budget 100, writes results/nas.*
    python bench/nas.py --budget 100 --supernet-steps 200 --eval-blocks 16 --search-blocks 4

Methods, each an optuna study of `--budget` evaluations over the same importance-sorted space
(hidden size, layers by importance, KV groups x query heads per group, MLP width; widths at
multiples of `--multiple`): random search, NSGA-II (generations of `--population`; its first
generation is random search's first trials), multi-objective local search, and NSGA-II over the
same model after `--supernet-steps` of weight-sharing supernet training (sandwich rule, in-place
distillation; one training block of `--supernet-seq-len` tokens per step).

Every search visits only sub-networks within `--params-range` of the dense parameters (the others
are skipped unevaluated) and scores KL on `--search-blocks` calibration blocks after the ones the
importance is computed on; each method's front is then scored
again on the held-out blocks (the ones the baselines are measured on), its Pareto front taken
again, and its hypervolume computed against one reference point for all. Plotted with the uniform
and depth baselines at several sparsities and, if `--darwin` (results/darwin.json) exists, the DarwinLM
points (its one-shot KL, measured by bench/darwin.py on its own held-out blocks: the same ones when
both use 16 blocks of 512 tokens).
Latency: dense vs each front's point nearest 50% of block parameters and the uniform 50% baseline,
measured round-robin (`compare_latency`), against the ideal FLOP ratio.

Studies, the supernet checkpoint and held-out scores live under `--work`, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from evoprune.arch.params import block_params, total_params
from evoprune.arch.spec import SubnetSpec
from evoprune.atomic import staged_file, write_json, write_text
from evoprune.config import load_config
from evoprune.errors import UserError
from evoprune.evaluation.latency import compare_latency
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.whittle.objectives import make_objectives
from evoprune.whittle.pareto import hypervolume, pareto_front
from evoprune.whittle.pipeline import sorted_space, supernet_step, trial_rows
from evoprune.whittle.study import open_study, run_study
from evoprune.data import data_blocks
from evoprune.models import load_source
from evoprune.obs.calibration import collect_stats
from evoprune.obs.database import model_fingerprint
from evoprune.baselines.depth import depth_spec
from evoprune.arch.target import resolve_target
from evoprune.baselines.uniform import uniform_spec
from evoprune.report import markdown_table

OBJECTIVES = ["kl", "params"]
SEARCHES = {"random": "random", "nsga2": "nsga2", "local": "local", "nsga2+supernet": "nsga2"}


class HeldOut:
    """KL on the held-out blocks, cached in a JSON file by name (a rerun does not score again)."""

    def __init__(self, path: Path, blocks: torch.Tensor, teacher, batch_size: int):
        self.path, self.blocks, self.teacher, self.batch_size = path, blocks, teacher, batch_size
        self.scores = json.loads(path.read_text()) if path.exists() else {}

    def kl(self, key: str, build) -> float:
        if key not in self.scores:
            self.scores[key] = kl_to_teacher(build(), self.blocks, self.teacher, batch_size=self.batch_size)
            write_json(self.path, self.scores)
        return self.scores[key]


def check_work(work: Path, settings: dict) -> None:
    marker = work / "settings.json"
    if marker.exists():
        saved = json.loads(marker.read_text())
        differ = sorted(k for k in settings if saved.get(k) != settings[k])
        if differ:
            raise UserError(f"{work} holds studies made with other settings ({', '.join(differ)}); "
                            "pass another --work or delete it")
    work.mkdir(parents=True, exist_ok=True)
    write_json(marker, settings)


def point(name: str, spec: SubnetSpec, kl: float, dense_block: int, **extra) -> dict:
    return {"method": name, "kl": kl, "params": spec.num_params(), "block_params": spec.block_params(),
            "block_fraction": spec.block_params() / dense_block, **extra}


def darwin_points(path: Path, dense_total: int, dense_block: int) -> list[dict]:
    """DarwinLM's one-shot points from bench/darwin.py (its own evolution, same held-out split)."""
    if not path.exists():
        return []
    rows = json.loads(path.read_text())["rows"]
    points = []
    for r in rows:
        if r["method"] == "evolution, training-aware":
            kept = round((1 - r["block_sparsity"]) * dense_block)
            points.append({"method": "DarwinLM", "kl": r["KL one-shot"], "params": dense_total - dense_block + kept,
                           "block_params": kept, "block_fraction": kept / dense_block, "sparsity": r["sparsity"]})
    return points


def plot_fronts(fronts: dict[str, list[dict]], baselines: list[dict], darwin: list[dict], dense_block: int,
                dense_total: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    for i, (name, front) in enumerate(fronts.items()):
        xs, ys = zip(*sorted((p["params"] / 1e6, p["kl"]) for p in front))
        ax.step(xs, ys, where="post", color=f"C{i}", alpha=0.8)
        ax.scatter(xs, ys, s=14, color=f"C{i}", label=f"{name} front")
    markers = {"uniform": "s", "depth": "^"}
    for kind, marker in markers.items():
        pts = [b for b in baselines if b["method"].startswith(kind)]
        ax.scatter([p["params"] / 1e6 for p in pts], [p["kl"] for p in pts], marker=marker, s=60, color="k",
                   facecolors="none", label=f"{kind} baseline", zorder=3)
    if darwin:
        ax.scatter([p["params"] / 1e6 for p in darwin], [p["kl"] for p in darwin], marker="*", s=160, color="C6",
                   label="DarwinLM (results/darwin.json)", zorder=4)
    ax.axvline((dense_total - dense_block / 2) / 1e6, color="grey", lw=0.8, ls=":", label="50% of block params")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)
    ax.set(xlabel="parameters (millions)", ylabel="KL to the dense model (held-out)",
           title="sub-network search at equal evaluation budget")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_latency(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    width = 0.27
    for k, (key, label) in enumerate((("prefill_speedup", "prefill (measured)"), ("decode_speedup", "decode (measured)"),
                                      ("ideal_speedup", "ideal (FLOP ratio)"))):
        ax.bar([i + (k - 1) * width for i in range(len(rows))], [r[key] for r in rows], width, label=label)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(range(len(rows)), names, rotation=20, fontsize=8)
    ax.set(ylabel="speedup vs dense", title="latency at ~50% of block parameters")
    ax.legend(fontsize=8)
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget", type=int, default=100, help="completed evaluations per method")
    ap.add_argument("--methods", nargs="+", choices=list(SEARCHES), default=list(SEARCHES))
    ap.add_argument("--population", type=int, default=20,
                    help="NSGA-II generation size (optuna's default 50 would leave one generation at budget 100)")
    ap.add_argument("--supernet-steps", type=int, default=100, help="supernet training steps (one block each)")
    ap.add_argument("--supernet-seq-len", type=int, default=128, help="tokens per supernet training block")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calibration-blocks", type=int, default=32)
    ap.add_argument("--search-blocks", type=int, default=4, help="calibration blocks the searches score KL on")
    ap.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks of the fronts and baselines")
    ap.add_argument("--multiple", type=int, default=32, help="hidden size and MLP widths at multiples of this")
    ap.add_argument("--params-range", type=float, nargs=2, default=[0.4, 1.0], metavar=("LOW", "HIGH"),
                    help="every search (and the supernet's sampling) visits only sub-networks with this fraction "
                         "of the dense parameters; 0.4 is about 75%% of block parameters removed")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="baseline sparsities")
    ap.add_argument("--repeats", type=int, default=5, help="latency repeats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--darwin", default="results/darwin.json", help="bench/darwin.py results to plot, if present")
    ap.add_argument("--work", default="results/tmp/nas")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()

    work, out = Path(args.work), Path(args.out)
    cfg = load_config(None, [f"model.source={args.model}", f"data.seq_len={args.seq_len}",
                             f"data.calibration_blocks={args.calibration_blocks}", f"data.eval_blocks={args.eval_blocks}",
                             f"eval.repeats={args.repeats}", f"seed={args.seed}", f"prune.multiple={args.multiple}"])
    check_work(work, {"model": args.model, "seq_len": args.seq_len, "calibration_blocks": args.calibration_blocks,
                      "search_blocks": args.search_blocks, "eval_blocks": args.eval_blocks,
                      "multiple": args.multiple, "seed": args.seed, "supernet_steps": args.supernet_steps,
                      "supernet_seq_len": args.supernet_seq_len, "population": args.population,
                      "params_range": args.params_range, "search_blocks_after_importance": True})
    started = time.time()
    dense = load_source(cfg)
    shape = dense.adapter.shape(dense.model)
    dense_block, dense_total = block_params(shape), total_params(shape)
    fingerprint = model_fingerprint(dense.model, dense.adapter)
    bs = cfg.data.batch_size
    # importance statistics on the first calibration blocks, search KL on the ones after them
    calib = data_blocks(cfg, dense.tokenizer, "calibration", cfg.data.calibration_blocks + args.search_blocks)
    search_blocks = calib[cfg.data.calibration_blocks:]
    if len(search_blocks) < args.search_blocks:
        raise SystemExit(f"the calibration split has {len(calib)} blocks; lower --calibration-blocks or --search-blocks")
    calib = calib[:cfg.data.calibration_blocks]
    eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
    search_teacher = teacher_for(dense.model, str(dense.path), search_blocks, cfg.eval, bs)
    heldout = HeldOut(work / "heldout_kl.json", eval_blocks,
                      teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, bs), bs)
    stats = collect_stats(dense.model, dense.adapter, calib, bs)

    # baselines on the unsorted model (their unit indices are the original ones)
    baselines, baseline_models = [], {}
    heads, neurons = stats.head_energy(dense.adapter, dense.model), stats.neuron_energy(dense.adapter, dense.model)
    for s in args.sparsities:
        target = resolve_target(shape, sparsity=s)
        for name, spec in ((f"uniform-{s:g}", uniform_spec(shape, heads, neurons, target)),
                           (f"depth-{s:g}", depth_spec(shape, stats.block_influence(), target))):
            sliced = dense.adapter.slice(dense.model, spec)
            baselines.append(point(name, spec, heldout.kl(f"baseline|{name}", lambda: sliced), dense_block))
            if s == 0.5:
                baseline_models[name] = (spec, sliced)

    space = sorted_space(dense, stats, args.multiple)  # dense.model is now sorted (same function)
    feasible = space.params_range_check(*args.params_range)
    models = {}
    fronts, searched, timing = {}, {}, {}
    for method in args.methods:
        if method.endswith("+supernet"):
            trained = dataclasses.replace(dense, model=copy.deepcopy(dense.model))
            t = time.time()
            supernet_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=args.supernet_seq_len))
            supernet_step(supernet_cfg, trained, space, args.supernet_steps, work / "supernet", feasible=feasible)
            timing["supernet_training_s_this_call"] = round(time.time() - t, 1)
            model, study_print = trained.model, f"{fingerprint}:supernet{args.supernet_steps}"
        else:
            model, study_print = dense.model, fingerprint
        models[method] = model
        study = open_study(work / method / "study.db", OBJECTIVES, SEARCHES[method], args.seed, study_print,
                           args.population)
        evaluate = make_objectives(model, dense.adapter, space, OBJECTIVES, search_blocks, search_teacher,
                                   batch_size=bs)
        done_before = len(trial_rows(study, OBJECTIVES))
        t = time.time()
        run_study(study, space, evaluate, args.budget, feasible=feasible)
        rows = trial_rows(study, OBJECTIVES)
        seconds = time.time() - t
        timing[method] = {"evaluations_this_call": len(rows) - done_before, "search_s_this_call": round(seconds, 1)}
        searched[method] = rows
        configs = [{k: rows[i][k] for k in space.dimensions()} for i in pareto_front([[r[o] for o in OBJECTIVES]
                                                                                       for r in rows])]
        scored = []
        for config in {json.dumps(c, sort_keys=True): c for c in configs}.values():
            spec = space.to_spec(config)
            kl = heldout.kl(f"{method}|{json.dumps(config, sort_keys=True)}",
                            lambda: dense.adapter.slice(model, spec))
            scored.append(point(method, spec, kl, dense_block, config=config))
        fronts[method] = [scored[i] for i in pareto_front([[p["kl"], p["params"]] for p in scored])]

    everything = [p for f in fronts.values() for p in f] + baselines
    reference = [1.1 * max(p["kl"] for p in everything), 1.1 * dense_total]
    box = reference[0] * reference[1]
    summary = []
    for method, front in fronts.items():
        summary.append({"method": method, "evaluations": len(searched[method]), "front_points": len(front),
                        "hypervolume": hypervolume([[p["kl"], p["params"]] for p in front], reference) / box,
                        **{f"best_kl_at_most_{kept}pct_block_params": min(
                            (p["kl"] for p in front if p["block_fraction"] <= kept / 100), default=None)
                           for kept in (75, 50)}})
    darwin = darwin_points(Path(args.darwin), dense_total, dense_block)

    # latency: dense vs each front's point nearest 50% of block parameters, and the uniform 50% baseline
    full = SubnetSpec.full(shape)
    timed = {"dense": (full, dense.model)}
    for method, front in fronts.items():
        nearest = min(front, key=lambda p: abs(p["block_fraction"] - 0.5))
        spec = space.to_spec(nearest["config"])
        timed[f"{method} @{nearest['block_fraction']:.2f}"] = (spec, dense.adapter.slice(models[method], spec))
    if "uniform-0.5" in baseline_models:
        timed["uniform-0.5"] = baseline_models["uniform-0.5"]
    latency = compare_latency({k: m for k, (_, m) in timed.items()}, prompt_len=cfg.eval.prompt_len,
                              new_tokens=cfg.eval.new_tokens, warmup=cfg.eval.warmup, repeats=cfg.eval.repeats)
    base = latency["dense"]
    latency_rows = [{"model": name, "block_fraction": spec.block_params() / dense_block,
                     "prefill_tokens_per_s": latency[name].prefill_tokens_per_s,
                     "decode_tokens_per_s": latency[name].decode_tokens_per_s,
                     "prefill_speedup": latency[name].prefill_tokens_per_s / base.prefill_tokens_per_s,
                     "decode_speedup": latency[name].decode_tokens_per_s / base.decode_tokens_per_s,
                     "ideal_speedup": full.flops_per_token() / spec.flops_per_token()}
                    for name, (spec, _) in timed.items()]

    out.mkdir(parents=True, exist_ok=True)
    plot_fronts(fronts, baselines, darwin, dense_block, dense_total, out / "nas_front.png")
    plot_latency(latency_rows, out / "nas_latency.png")
    setup = {"model": args.model, "budget": args.budget, "supernet_steps": args.supernet_steps,
             "supernet_seq_len": args.supernet_seq_len,
             "nsga2_population": args.population,
             "search_tokens": int(search_blocks.numel()), "eval_tokens": int(eval_blocks.numel()),
             "multiple": args.multiple, "seed": args.seed, "space": {k: len(v) for k, v in space.dimensions().items()},
             "reference": reference, "hypervolume_unit": "fraction of the reference box (KL x params)",
             "timing": timing, "wall_s_this_call": round(time.time() - started, 1),
             "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                        f"torch {torch.__version__}"}
    write_json(out / "nas.json", {"setup": setup, "summary": summary, "fronts": fronts, "baselines": baselines,
                                  "darwin": darwin, "latency": latency_rows,
                                  "trials": {m: rows for m, rows in searched.items()}})
    front_table = [{"method": p["method"], "params": p["params"], "block_fraction": p["block_fraction"], "kl": p["kl"],
                    **p["config"]} for f in fronts.values() for p in sorted(f, key=lambda q: q["params"])]
    text = (f"# Sub-network search at equal budget\n\nCommand: `python {' '.join(sys.argv)}`\n\n"
            f"{args.budget} evaluations per method; search KL on {search_blocks.numel()} calibration tokens, fronts "
            f"and baselines scored on {eval_blocks.numel()} held-out tokens. Hypervolume as a fraction of the box up "
            f"to the reference ({reference[0]:.3g} KL, {reference[1]:.4g} params), the same for all methods.\n\n"
            + markdown_table(summary) + "\n![fronts](nas_front.png)\n\n## Baselines and DarwinLM\n\n"
            + markdown_table(baselines + darwin, ["method", "params", "block_fraction", "kl"])
            + "\n## Latency (batch 1, prompt "
            f"{cfg.eval.prompt_len}, {cfg.eval.new_tokens} decode steps, median of {cfg.eval.repeats})\n\n"
            + markdown_table(latency_rows) + "\n![latency](nas_latency.png)\n\n## Fronts (held-out KL)\n\n"
            + markdown_table(front_table) + "\n## Setup\n\n```json\n" + json.dumps(setup, indent=2) + "\n```\n")
    write_text(out / "nas.md", text)
    print(markdown_table(summary))
    print(markdown_table(latency_rows))


if __name__ == "__main__":
    main()
