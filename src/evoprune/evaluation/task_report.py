"""The task-accuracy part of a report: one row per task, one column per model, and a grouped bar plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..report import markdown_table, save_png  # noqa: E402


def task_rows(scores: dict[str, dict]) -> list[dict]:
    """scores: {model name: run_tasks(...) result} -> table rows with `metric ± stderr` per model."""
    first = next(iter(scores.values()))
    rows = []
    for task, m in first.items():
        if task == "average":
            continue
        metric = m["main_metric"]
        row = {"task": task, "metric": metric, "shots": m["num_fewshot"], "examples": m.get("samples", "")}
        for model, result in scores.items():
            r = result.get(task, {})
            value, err = r.get(metric), r.get(f"{metric}_stderr")
            row[model] = "" if value is None else f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else "")
        if m.get("split_note"):
            row["note"] = m["split_note"]
        rows.append(row)
    rows.append({"task": "average", "metric": "main", **{
        model: f"{result['average']['main_metric_mean']:.3f}" for model, result in scores.items()}})
    return rows


def plot_tasks(scores: dict[str, dict], path: Path) -> Path:
    first = next(iter(scores.values()))
    tasks = [t for t in first if t != "average"]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(tasks) + 2), 3.4), constrained_layout=True)
    width = 0.8 / len(scores)
    for k, (model, result) in enumerate(scores.items()):
        values = [result[t].get(result[t]["main_metric"], 0.0) for t in tasks]
        ax.bar([i + k * width for i in range(len(tasks))], values, width, label=model)
    ax.set_xticks([i + width * (len(scores) - 1) / 2 for i in range(len(tasks))], tasks, rotation=30, ha="right")
    ax.set(ylabel="accuracy (task's main metric)", title="lm-eval tasks", ylim=(0, 1))
    ax.legend(fontsize=8)
    return save_png(fig, path)


def task_section(scores: dict[str, dict], plot_path: Path) -> str:
    plot_tasks(scores, plot_path)
    rows = task_rows(scores)
    columns = ["task", "metric", "shots", "examples", *scores, "note"]
    notes = {r["average"]["note"] for r in scores.values() if r["average"].get("note")}
    limit = next(iter(scores.values()))["average"].get("limit")
    head = f"At most {limit} examples per task.\n\n" if limit else ""
    return head + markdown_table(rows, columns) + "".join(f"\n{n}\n" for n in notes) + \
        f"\n![tasks]({plot_path.name})\n"
