"""The report section on unseen text: a model x domain table beside the held-out figure, and a bar plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..data.unseen import UnseenDomain  # noqa: E402
from ..report import markdown_table, save_png  # noqa: E402

IN_DISTRIBUTION = "held-out (in-distribution)"
MEAN = "unseen mean"


def unseen_columns(domains: list[UnseenDomain]) -> list[str]:
    """Table columns after `model`: the held-out figure, each unseen domain, their mean, the held-back source."""
    heldback = [f"{d.name} (held back)" for d in domains if d.heldback]
    return [IN_DISTRIBUTION, *(d.name for d in domains if not d.heldback), MEAN, *heldback]


def unseen_table_rows(rows: dict[str, dict], domains: list[UnseenDomain]) -> list[dict]:
    """One flat row per model: perplexity on the held-out split, on each domain, their mean, held back."""
    table = []
    for name, row in rows.items():
        if "unseen_perplexity" not in row:  # measured on the held-out blocks only
            continue
        flat = {"model": name, IN_DISTRIBUTION: row.get("perplexity"), MEAN: row.get("unseen_ppl_mean")}
        for d in domains:
            label = f"{d.name} (held back)" if d.heldback else d.name
            flat[label] = row.get("heldback_perplexity") if d.heldback else row["unseen_perplexity"].get(d.name)
        table.append({k: ("n/a" if v is None else v) for k, v in flat.items()})
    return table


def _interval(bounds: list[float]) -> str:
    return f"{bounds[0]:.4g}–{bounds[1]:.4g}"


def plot_unseen(table: list[dict], columns: list[str], path: Path) -> Path:
    """Grouped bars: perplexity (log scale) per column, one bar per model."""
    fig, ax = plt.subplots(figsize=(1.4 * len(columns) + 2, 3.6), constrained_layout=True)
    width = 0.8 / len(table)
    palette = ["#888888", "#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd"]
    for i, row in enumerate(table):
        xs = [c + (i - (len(table) - 1) / 2) * width for c in range(len(columns))]
        values = [row[c] if isinstance(row[c], float) else float("nan") for c in columns]
        ax.bar(xs, values, width, label=row["model"], color=palette[i % len(palette)])
    ax.set_xticks(range(len(columns)), columns, rotation=20, ha="right")
    ax.set(title="perplexity on held-out and unseen text", ylabel="perplexity (log scale)", yscale="log")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def unseen_section(rows: dict[str, dict], domains: list[UnseenDomain], png: Path) -> str:
    """Markdown for report.md: the table, the plot (written to `png`) and what each domain is."""
    columns = unseen_columns(domains)
    table = unseen_table_rows(rows, domains)
    plot_unseen(table, columns, png)
    sources = "\n".join(
        f"- `{d.name}`{' (held back: no setting is ever tuned on it)' if d.heldback else ''}: {d.genre}; {d.origin}; "
        + (f"{d.blocks.shape[0]} blocks of {d.blocks.shape[1]} tokens from {d.documents} documents"
           if d.blocks is not None else "not measured")
        + "".join(f"; {note}" for note in d.notes) for d in domains)
    intervals = [f"{name} {_interval(row['unseen_ppl_mean_ci95'])}" for name, row in rows.items()
                 if row.get("unseen_ppl_mean_ci95")]
    precision = ("95% intervals of the unseen mean (blocks as samples): " + "; ".join(intervals) + ".\n\n"
                 if intervals else "")
    return (markdown_table(table, ["model", *columns])
            + f"\n![unseen text]({png.name})\n\n" + precision +
            "Text of genres this run never calibrates, searches or trains on; documents that the run's data holds "
            f"are left out (by text hash). `{MEAN}` is the geometric mean over the domains that are not held back.\n\n"
            + sources + "\n")
