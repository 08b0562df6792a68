"""The headline table and plots of bench/compare.py: one row per method and sparsity."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evoprune.atomic import staged_file  # noqa: E402
from evoprune.report import markdown_table  # noqa: E402

MARKERS = "o^sDvP*X"


def headline_table(rows: list[dict], tasks: list[str]) -> str:
    """Markdown: size, perplexity (held-out, unseen text, held back), KL, each task's main metric and their mean,
    measured and ideal speedups."""
    table = []
    for r in rows:
        line = {"sparsity": f"{r['sparsity']:.0%}", "method": r["method"]}
        if r["status"] != "ok":
            table.append({**line, "note": r["status"]})
            continue
        line.update({"params": r["params"], "block sparsity": f"{r['block_sparsity']:.3f}",
                     "perplexity": r["perplexity"], "unseen ppl": _maybe(r.get("unseen_ppl_mean"), "{:.4g}"),
                     "held-back ppl": _maybe(r.get("heldback_perplexity"), "{:.4g}"), "KL to dense": r["kl_to_dense"]})
        line.update({t: _maybe(r["tasks"].get(t), "{:.3f}") for t in tasks})
        line["task avg"] = _maybe(r.get("task_average"), "{:.3f}")
        for key in ("prefill_speedup", "decode_speedup", "ideal_speedup"):
            line[key.replace("_", " ")] = _maybe(r.get(key), "{:.2f}")
        line["note"] = r.get("note", "")
        table.append(line)
    columns = ["sparsity", "method", "params", "block sparsity", "perplexity", "unseen ppl", "held-back ppl",
               "KL to dense", *tasks, "task avg",
               "prefill speedup", "decode speedup", "ideal speedup", "note"]
    return markdown_table(table, columns)


def _maybe(value, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def plot_against_params(rows: list[dict], key: str, ylabel: str, title: str, path: Path, log: bool = False) -> Path:
    """`key` against total parameters, one series per method (its sparsities joined), dense as a star."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["status"] == "ok" and r["method"] != "dense"))
    for k, method in enumerate(methods):
        points = sorted((r["params"] / 1e6, r[key]) for r in rows
                        if r["method"] == method and r["status"] == "ok" and r.get(key) is not None)
        if points:
            ax.plot(*zip(*points), marker=MARKERS[k % len(MARKERS)], color=f"C{k}", label=method)
    for r in rows:
        if r["method"] == "dense" and r["status"] == "ok" and r.get(key) is not None:
            ax.scatter([r["params"] / 1e6], [r[key]], marker="*", s=160, color="k", label="dense", zorder=3)
    ax.set(xlabel="parameters (millions)", ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_speedups(rows: list[dict], path: Path) -> Path:
    """Measured prefill and decode speedup against the FLOP ratio; on the diagonal = as fast as the FLOPs say."""
    ok = [r for r in rows if r["status"] == "ok" and r["method"] != "dense" and r.get("prefill_speedup")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0), constrained_layout=True, sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in ok))
    top = max([r[k] for r in ok for k in ("prefill_speedup", "decode_speedup", "ideal_speedup")] + [1.0]) * 1.08
    for ax, phase in zip(axes, ("prefill", "decode")):
        ax.plot([1, top], [1, top], ":", color="gray", label="ideal (FLOP ratio)")
        for k, method in enumerate(methods):
            mine = [r for r in ok if r["method"] == method]
            ax.scatter([r["ideal_speedup"] for r in mine], [r[f"{phase}_speedup"] for r in mine],
                       marker=MARKERS[k % len(MARKERS)], color=f"C{k}", label=method)
        ax.set(xlabel="ideal speedup (dense FLOPs / FLOPs)", title=f"{phase} speedup over dense", xlim=(0.95, top),
               ylim=(0.5, top))
    axes[0].set_ylabel("measured speedup")
    axes[1].legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
