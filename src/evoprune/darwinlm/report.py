"""The DarwinLM run's report: results, target, search progress, what was kept, database size.

Each selection draws its fitness blocks anew, so the search's own fitness figures are comparable
within a generation only. The progress plot therefore also shows every generation's parent scored
one-shot on the same few held-out blocks: a curve across generations a person can read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.unseen import UnseenDomain
from ..evaluation.unseen_report import unseen_section
from ..evaluation.teacher import TeacherCache
from ..evaluation.teacher_subset import TeacherSubset
from ..memory import memory_section
from ..evaluation.suite import METRIC_COLUMNS
from ..report import markdown_table, plot_bars, plot_kept_per_layer, save_png, write_report
from ..levels.budget import format_cost
from .fitness import CandidateEvaluator
from ..levels.genotype import Genotype
from ..serving.deploy import serving_line

PROGRESS_BLOCKS = 4  # held-out blocks every parent is scored on


def parent_kl_curve(evaluator: CandidateEvaluator, history: list[dict], eval_blocks: torch.Tensor,
                    teacher: TeacherCache, batch_size: int) -> list[float]:
    """One-shot KL of each generation's parent (`history[i]["parent"]`) on the first held-out blocks."""
    subset = TeacherSubset(teacher, eval_blocks, list(range(min(PROGRESS_BLOCKS, len(eval_blocks)))))
    scored: dict[Genotype, float] = {}
    for record in history:
        parent = Genotype.from_dict(record["parent"])
        if parent not in scored:  # a parent often wins several generations running
            scored[parent] = evaluator.kl(parent, subset.blocks, subset)
    return [scored[Genotype.from_dict(r["parent"])] for r in history]


def _fewer_blocks_line(rows: dict) -> str:
    """Which rows were measured on fewer held-out blocks than the dense one (eval.reference_blocks)."""
    full = rows["dense"].get("heldout_blocks")
    fewer = [f"{name} on {r['heldout_blocks']}" for name, r in rows.items()
             if full and r.get("heldout_blocks", full) < full]
    return f"\nHeld-out blocks: {full} for the dense and searched models, {', '.join(fewer)} " \
           "(eval.reference_blocks; its interval says how precise that is).\n" if fewer else ""


def write_darwin_report(out: Path, spec, rows: dict, metrics: dict, history: list[dict],
                        unseen: list[UnseenDomain] | None = None) -> None:
    """`out/report.md` with fitness.png, kept_per_layer.png, perplexity.png and (with `unseen`) unseen.png beside it."""
    search = metrics["search"]
    curve = search.get("parent_heldout_kl")
    _plot_progress(history, curve, out / "fitness.png")
    plot_kept_per_layer(spec, out / "kept_per_layer.png")
    plot_bars({k: r["perplexity"] for k, r in rows.items()}, "held-out perplexity", "perplexity (log scale)",
              out / "perplexity.png", log=True)
    db = metrics["database"]
    progress = "" if not curve else (
        f" The parent's one-shot KL on {PROGRESS_BLOCKS} fixed held-out blocks went from {curve[0]:.4f} "
        f"(first parent) to {curve[-1]:.4f} (the exported model). The selection's own figures are measured on "
        "fitness blocks drawn anew every generation, so they compare candidates within a generation only.")
    sections = [
        ("Result", markdown_table(list(rows.values()), [c for c in METRIC_COLUMNS if c in rows["dense"]])
         + _fewer_blocks_line(rows) + "\n![perplexity](perplexity.png)\n"),
        *([("Unseen text", unseen_section(rows, unseen, out / "unseen.png"))] if unseen is not None else []),
        ("Target", markdown_table([metrics["target"]]) + _budget_line(metrics.get("budget"))),
        ("Search", f"{search['generations']} generations, {search['evaluations']} candidate evaluations, "
                   f"{search['search_seconds']:.0f} s.{_first_parent(search)}{progress}\n\n"
                   "![search progress](fitness.png)\n"),
        *([("Re-fit", _refit_line(metrics["refit"]))] if "refit" in metrics else []),
        ("What was kept", markdown_table([spec.summary()]) + "\n![kept per layer](kept_per_layer.png)\n"),
        ("Database", f"{db['bytes'] / 2**20:.1f} MB on disk ({db['bytes'] / db['dense_weight_bytes']:.2f}x the dense "
                     f"weights)."),
        ("Memory", memory_section(metrics["memory"])),
    ]
    if "serving" in metrics:
        sections.insert(-1, ("Serving", serving_line(metrics["serving"]) + "\n"))
    write_report(out / "report.md", f"evoprune darwin: {spec.meta.get('source')}", sections)


def _refit_line(refit: dict) -> str:
    return (f"The output projections of the chosen model were re-solved layer by layer on its own inputs "
            f"(target `{refit['target']}`, {refit['tokens']:,} calibration tokens, {refit['seconds']:.0f} s): the "
            f"mean relative error of a module to its target went from {refit['mean_error_before']:.4f} to "
            f"{refit['mean_error_after']:.4f}. The figures above are the re-fitted model's.\n")


def _budget_line(budget: dict | None) -> str:
    """A FLOPs or latency budget, in its own unit (the table above counts block parameters)."""
    if not budget:
        return ""
    where = (f" ({budget['mode']} of {budget['tokens']} tokens, timed in {budget['engine']})"
             if budget["metric"] == "latency" else "")
    return (f"\nThe budget counts {budget['metric']}{where}: the dense blocks cost "
            f"{format_cost(budget['dense_blocks'], budget['metric'])}, the target was "
            f"{format_cost(budget['target'], budget['metric'])}, the result costs "
            f"{format_cost(budget['achieved'], budget['metric'])} ({budget['achieved_fraction']:.3f} of dense) by the "
            "table.\n")


def _first_parent(search: dict) -> str:
    if search.get("first_parent", "mip" if search.get("replace_one_seconds") else "uniform") != "mip":
        return ""
    mip = (f"the MIP assembly of replace-one KLs (every module scored alone at its levels, the rest dense; "
           f"{search['replace_one_seconds']:.0f} s of the search time)")
    check = search.get("first_parent_check")
    if not check:
        return f" The search started from {mip}, competing with the uniform genotype for the first parent."
    kls = (f"KL {check['mip_kl']:.4f} against {check['uniform_kl']:.4f} on the first stage's "
           f"{check['first_stage_tokens']:,} fitness tokens; {check['stages']} stages decide") \
        if check.get("uniform_kl") is not None else "the selection stages decide"
    if check["winner"] == "mip":
        text = f" The search started from {mip}, which won the check against the uniform genotype ({kls})."
    elif check["winner"] == "uniform":
        text = (f" {mip[0].upper() + mip[1:]} lost the check against the uniform genotype ({kls}), so the search "
                "started from the uniform genotype.")
    else:
        text = f" A random genotype near {mip} won the first selection ({kls})."
    if search.get("generations") == 0:
        text += f" No evolution followed (profile {search.get('profile', 'mip')}): the result is that genotype."
    return text


def _plot_progress(history: list[dict], parent_kl: list[float] | None, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
    gens = [h["generation"] for h in history]
    if parent_kl:
        ax.plot(gens, parent_kl, "D-", color="black", label=f"parent, one-shot, {PROGRESS_BLOCKS} fixed held-out blocks")
    ax.plot(gens, [h["fitness"][-1] for h in history], "o-", alpha=0.7, label="winner, last stage (its fitness blocks)")
    ax.plot(gens, [h["best_first_stage"] for h in history], "s--", alpha=0.5,
            label="best, first stage (its fitness blocks)")
    ax.set(xlabel="generation", ylabel="KL to dense (nats/token)", title="search progress")
    ax.legend(fontsize=7)
    save_png(fig, path)
