"""How well does each selection signal predict the model after recovery? (DarwinLM's premise, measured)

    python bench/selection_fidelity.py --sparsity 0.25      # SmolLM2-135M, writes results/selection_fidelity-0.25.*
    python bench/selection_fidelity.py --sparsity 0.5 --random 10 --winners results/tmp/darwin/winners-0.5.json

Training-aware selection assumes that a candidate's KL after a brief training ranks candidates
the way their quality after the real recovery does, and better than their one-shot KL. This
takes a set of genotypes at one budget (the uniform one, random ones, and optionally the winners
of `bench/darwin.py`), and measures for each:
  - one-shot KL on the last selection stage's fitness blocks (what KL-only selection sees);
  - the same KL after the brief training of selection, once per brief-training loss (lm, lm+kd);
  - held-out KL and perplexity after the recovery `bench/darwin.py` gives every model.
It reports each signal's rank correlation with the recovered KL (Spearman, Kendall), and the
regret of picking by it: the recovered KL of its pick minus the best recovered KL in the set.
Each genotype's figures are saved as they are measured, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

from darwin import RECOVERY_FIRST_BLOCK  # noqa: E402  (bench/darwin.py: the recovery's train blocks)
from evoprune.darwinlm import pipeline as darwin  # noqa: E402
from evoprune.atomic import staged_file, write_json, write_text  # noqa: E402
from evoprune.cli import parse_with_overrides  # noqa: E402
from evoprune.config import load_config  # noqa: E402
from evoprune.evaluation.perplexity import mean_nll  # noqa: E402
from evoprune.evaluation.suite import teacher_for  # noqa: E402
from evoprune.evaluation.teacher import kl_to_teacher  # noqa: E402
from evoprune.data import data_blocks  # noqa: E402
from evoprune.models import load_source  # noqa: E402
from evoprune.arch.target import resolve_target  # noqa: E402
from evoprune.report import markdown_table  # noqa: E402
from evoprune.levels.budget import make_budget, uniform_genotype  # noqa: E402
from evoprune.levels.genotype import Genotype  # noqa: E402
from evoprune.darwinlm.mutation import mutate, random_genotype  # noqa: E402
from evoprune.training import TrainConfig, train_on_blocks  # noqa: E402

LOSSES = ("lm", "kd", "lm+kd")
TARGET = "KL recovered (held-out)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Trailing key=value words are config overrides (e.g. model.source=DIR).")
    ap.add_argument("--sparsity", type=float, default=0.25)
    ap.add_argument("--random", type=int, default=8, help="random genotypes inside the budget")
    ap.add_argument("--winners", help="a bench/darwin.py winners-<s>.json whose genotypes join the set")
    ap.add_argument("--offspring", type=int, default=0,
                    help="offspring of the first winner (DarwinLM's mutation): one selection's decision, measured")
    ap.add_argument("--brief-losses", default="lm,lm+kd", help=f"comma list of {', '.join(LOSSES)}")
    ap.add_argument("--brief-tokens", type=int, default=None,
                    help="tokens of brief training (default: the profile's selection training, all stages)")
    ap.add_argument("--brief-offset", type=int, default=0,
                    help="train block the brief training starts at (0: the search's own blocks; another offset "
                         "shows whether a search's pick fits the blocks it was selected on)")
    ap.add_argument("--eval-blocks", type=int, default=16)
    ap.add_argument("--recovery-tokens", type=int, default=8192)
    ap.add_argument("--recovery-lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="results/tmp/darwin", help="holds (or gets) the database; figures go below it")
    ap.add_argument("--out", default="results")
    args = parse_with_overrides(ap, argv)
    overrides = args.overrides
    losses = [x.strip() for x in args.brief_losses.split(",") if x.strip()]
    if not losses or any(x not in LOSSES for x in losses):
        ap.error(f"--brief-losses takes a comma list of {', '.join(LOSSES)}, got {args.brief_losses!r}")
    if not 0 < args.sparsity < 1 or min(args.random, args.offspring, args.brief_offset) < 0:
        ap.error("--sparsity must be in (0, 1), --random, --offspring and --brief-offset >= 0")
    if args.offspring and not args.winners:
        ap.error("--offspring mutates the first of --winners; give --winners")
    if args.winners and not Path(args.winners).is_file():
        ap.error(f"--winners: no file {args.winners}")

    work = Path(args.work)
    cfg = load_config(None, [f"data.eval_blocks={args.eval_blocks}", *overrides])
    stages = darwin.stages_of(cfg)
    brief_tokens = args.brief_tokens if args.brief_tokens is not None else sum(s.train_tokens for s in stages)
    brief_count = max(1, math.ceil(brief_tokens / cfg.data.seq_len))
    if args.brief_offset + brief_count > RECOVERY_FIRST_BLOCK:
        ap.error(f"--brief-offset: the brief training would reach the recovery's train blocks "
                 f"({RECOVERY_FIRST_BLOCK} onwards)")
    dense = load_source(cfg)
    db = darwin.build_database(cfg, dense, work / "database")
    table = darwin.cost_table(db, "params")
    target = resolve_target(dense.adapter.shape(dense.model), sparsity=args.sparsity)
    budget = make_budget(table, target.block_params)
    lr = cfg.search.resolved()["lr"]

    evaluator = darwin.make_evaluator(cfg, dense, db, stages, progress=True)  # stitches as the search does
    evaluator.begin_selection(args.seed)
    fit_blocks, fit_teacher = evaluator.stage_blocks[-1], evaluator.stage_teachers[-1]  # the last (largest) stage's
    brief_blocks = data_blocks(cfg, dense.tokenizer, "train", args.brief_offset + brief_count)[args.brief_offset:]
    recovery_blocks = data_blocks(cfg, dense.tokenizer, "train", 64)[RECOVERY_FIRST_BLOCK:]  # as bench/darwin.py
    eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
    eval_teacher = teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, cfg.data.batch_size)

    genotypes = candidate_set(table, budget, args.random, args.seed, args.winners, args.offspring)
    store = work / f"fidelity-{args.sparsity:g}-seed{args.seed}.json"
    identity = {"sparsity": args.sparsity, "brief_tokens": brief_tokens, "lr": lr, "seed": args.seed,
                "recovery": [args.recovery_tokens, args.recovery_lr], "eval_blocks": args.eval_blocks,
                "search": darwin.search_identity(cfg)}
    saved = json.loads(store.read_text()) if store.exists() else {}
    rows = saved.get("rows", {}) if saved.get("identity") == identity else {}

    build = evaluator.build
    at = f" @ block {args.brief_offset}" if args.brief_offset else ""
    signals = ["KL one-shot", *(f"KL brief {loss}{at}" for loss in losses)]
    setup = (f"Brief training: {brief_tokens} tokens at lr {lr:g} (the profile's selection training); fitness on "
             f"{fit_blocks.numel()} calibration tokens. Recovery: {args.recovery_tokens} tokens of lm+kd at lr "
             f"{args.recovery_lr:g}, then KL and perplexity on {eval_blocks.numel()} held-out tokens.\n\n")
    for i, (name, g) in enumerate(genotypes.items()):
        row = rows.get(name, {"genotype": g.to_dict()})
        if "KL one-shot" not in row:
            row["KL one-shot"] = kl_to_teacher(build(g), fit_blocks, fit_teacher, batch_size=cfg.data.batch_size)
        for loss, signal in zip(losses, signals[1:]):
            if signal not in row:
                model = build(g)
                train_on_blocks(model, brief_blocks, brief_tokens, TrainConfig(lr=lr, seed=args.seed, loss=loss),
                                teacher=dense.model if loss != "lm" else None)
                row[signal] = kl_to_teacher(model, fit_blocks, fit_teacher, batch_size=cfg.data.batch_size)
        if TARGET not in row:
            model = build(g)
            train_on_blocks(model, recovery_blocks, args.recovery_tokens,
                            TrainConfig(lr=args.recovery_lr, seed=0, loss="lm+kd"), teacher=dense.model)
            row[TARGET] = kl_to_teacher(model, eval_blocks, eval_teacher, batch_size=cfg.data.batch_size)
            row["ppl recovered"] = float(torch.tensor(mean_nll(model, eval_blocks, cfg.data.batch_size)).exp())
        rows[name] = row
        write_json(store, {"identity": identity, "rows": rows})
        print(f"[{i + 1}/{len(genotypes)}] {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                              if isinstance(v, float)), flush=True)
        if i:  # the report so far, so a stopped run still leaves one
            write_report(argv, args, {n: rows[n] for n in genotypes if n in rows}, signals, identity, setup,
                         done=i + 1 == len(genotypes))


def write_report(argv: list[str], args, rows: dict[str, dict], signals: list[str], identity: dict, setup: str,
                 done: bool) -> None:
    """selection_fidelity-<s>.md / .json / .png from the genotypes measured so far."""
    names = list(rows)
    agreement = signal_agreement([{"name": n, **rows[n]} for n in names], signals)
    out = Path(args.out)
    stem = f"selection_fidelity-{args.sparsity:g}" + (f"-offset{args.brief_offset}" if args.brief_offset else "")
    plot_signals({n: rows[n] for n in names}, signals, out / f"{stem}.png", args.sparsity)
    listing = [{"genotype": n, **{k: rows[n][k] for k in [*signals, TARGET, "ppl recovered"]}} for n in names]
    text = (f"# Selection signals against recovery at {args.sparsity:.0%} of block parameters\n\n"
            f"Command: `python bench/selection_fidelity.py {' '.join(argv)}`"
            + ("" if done else f" (**stopped early: {len(names)} genotypes measured so far**)") + "\n\n"
            + setup +
            "## How well each signal ranks the recovered models\n\n"
            "Regret: recovered KL of the signal's pick minus the best recovered KL in the set.\n\n"
            + markdown_table(agreement) + "\n## Every genotype\n\n" + markdown_table(listing)
            + f"\n![signals against recovered KL]({stem}.png)\n")
    write_json(out / f"{stem}.json", {"identity": identity, "agreement": agreement, "rows": listing, "done": done})
    write_text(out / f"{stem}.md", text)
    if done:
        print(text)


def candidate_set(table, budget, n_random: int, seed: int, winners: str | None, offspring: int = 0
                  ) -> dict[str, Genotype]:
    """Named genotypes inside `budget`: uniform, `n_random` random walks (near and far), any winners, and
    `offspring` mutations of the first winner."""
    genotypes = {"uniform": uniform_genotype(table, budget)}
    rng = random.Random(seed)
    for k in range(n_random):
        walk = max(1, round(100 * (k + 1) / n_random))
        genotypes[f"random {k + 1} (walk {walk})"] = random_genotype(table, budget, rng, genotypes["uniform"], walk)
    if winners:
        found = {name: Genotype.from_dict(w["genotype"]) for name, w in json.loads(Path(winners).read_text())
                 ["winners"].items()}
        genotypes |= found
        parent_name, parent = next(iter(found.items()))
        for k in range(offspring):
            genotypes[f"offspring {k + 1} of {parent_name}"] = mutate(parent, table, budget, rng, trade=True)
    unique: dict[Genotype, str] = {}
    for name, g in genotypes.items():
        unique.setdefault(g, name)
    return {name: g for g, name in unique.items()}


def signal_agreement(rows: list[dict], signals: list[str]) -> list[dict]:
    """Per signal: Spearman and Kendall correlation with the recovered KL, and the regret of its pick."""
    truth = [r[TARGET] for r in rows]
    best = min(truth)
    out = []
    for signal in signals:
        values = [r[signal] for r in rows]
        pick = min(range(len(rows)), key=lambda i: values[i])
        out.append({"signal": signal, "Spearman": float(spearmanr(values, truth).statistic),
                    "Kendall": float(kendalltau(values, truth).statistic), "pick": rows[pick]["name"],
                    "regret (KL)": truth[pick] - best})
    return out


def plot_signals(rows: dict[str, dict], signals: list[str], path: Path, sparsity: float) -> Path:
    fig, axes = plt.subplots(1, len(signals), figsize=(4.2 * len(signals), 3.6), constrained_layout=True,
                             squeeze=False)
    truth = [r[TARGET] for r in rows.values()]
    for ax, signal in zip(axes[0], signals):
        ax.scatter([r[signal] for r in rows.values()], truth, color="#4c72b0")
        for name, r in rows.items():
            if name == "random search" or not name.startswith(("random ", "offspring")):  # searches' winners
                ax.annotate(name, (r[signal], r[TARGET]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=signal, ylabel=TARGET if ax is axes[0][0] else "", title=signal)
    fig.suptitle(f"selection signals against the recovered model, {sparsity:.0%} of block parameters removed")
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
