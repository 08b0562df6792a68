"""The latency-sweep part of a report: a table per workload and model, and a speedup-vs-workload plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..report import markdown_table, save_png  # noqa: E402

MB = 2**20


def sweep_table(rows: list[dict]) -> str:
    """Markdown: tokens/s as `median [q1, q3]`, speedups over the first model, memory in MB."""
    table = []
    for r in rows:
        line = {"batch": r["batch_size"], "prompt": r["prompt_len"], "model": r["model"],
                "prefill tok/s": _with_iqr(r["prefill_tokens_per_s"], r["prefill_iqr"]),
                "decode tok/s": _with_iqr(r["decode_tokens_per_s"], r["decode_iqr"]),
                "prefill speedup": r["prefill_speedup"], "decode speedup": r["decode_speedup"],
                "weights MB": r["weights_bytes"] / MB, "KV cache MB": r["kv_cache_bytes"] / MB,
                "weights + KV MB": r["memory_bytes"] / MB}
        if "cuda_peak_bytes" in r:
            line["CUDA peak MB"] = r["cuda_peak_bytes"] / MB
        table.append(line)
    return markdown_table(table)


def _with_iqr(median: float, iqr: list[float]) -> str:
    return f"{median:,.1f} [{iqr[0]:,.1f}, {iqr[1]:,.1f}]"


def plot_sweep(rows: list[dict], ideal: dict[str, float], path: Path) -> Path:
    """Prefill and decode speedup over the first model at every workload; dotted lines: `ideal` (FLOP ratio)."""
    workloads = list(dict.fromkeys((r["batch_size"], r["prompt_len"]) for r in rows))
    names = list(dict.fromkeys(r["model"] for r in rows))
    models = names[1:] or names  # the reference's own speedup is 1 everywhere
    x = list(range(len(workloads)))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(workloads) + 5), 3.6), constrained_layout=True,
                             sharey=True)
    for ax, phase in zip(axes, ("prefill", "decode")):
        for k, model in enumerate(models):
            by_workload = {(r["batch_size"], r["prompt_len"]): r[f"{phase}_speedup"] for r in rows
                           if r["model"] == model}
            ax.plot(x, [by_workload[w] for w in workloads], "o-", color=f"C{k}", label=model)
            if model in ideal:
                ax.axhline(ideal[model], color=f"C{k}", linestyle=":", linewidth=1.2,
                           label=f"{model}: ideal (FLOPs)")
        ax.set_xticks(x, [f"b{b}\np{p}" for b, p in workloads])
        ax.set(title=f"{phase} speedup", xlabel="workload (batch, prompt tokens)")
    axes[0].set_ylabel(f"x over {names[0]}")
    axes[1].legend(fontsize=7, loc="best")
    return save_png(fig, path)


def sweep_section(rows: list[dict], ideal: dict[str, float], plot_path: Path, new_tokens: int, repeats: int,
                  warmup: int) -> str:
    """The report section: what was measured, the table, and the plot (written to `plot_path`)."""
    plot_sweep(rows, ideal, plot_path)
    return (f"Every workload measures all models side by side, interleaved repeat by repeat: prefill of the "
            f"prompt, then {new_tokens} greedy decode steps; median [25th, 75th percentile] of {repeats} repeats "
            f"after {warmup} warm-up rounds. Speedups are over the first model; weights + KV is the parameter "
            f"and buffer bytes plus the KV cache after prompt + {new_tokens} positions.\n\n"
            + sweep_table(rows) + f"\n![latency sweep]({plot_path.name})\n")
