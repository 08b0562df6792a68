"""The report section on unseen text: a model x genre table (dev genres, their mean, test genres, their mean)
beside the held-out figure, and a bar plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..data.unseen import UnseenDomain  # noqa: E402
from ..data.unseen_sources import DEV, TEST  # noqa: E402
from ..report import markdown_table, save_png  # noqa: E402
from .unseen import read_test_figures  # noqa: E402

IN_DISTRIBUTION = "held-out (in-distribution)"
MEAN = "dev mean"
TEST_MEAN = "test mean"


def _label(d: UnseenDomain) -> str:
    return f"{d.name} (test)" if d.split == TEST else d.name


def unseen_columns(domains: list[UnseenDomain]) -> list[str]:
    """Table columns after `model`: the held-out figure, each dev genre, their mean, each test genre, their mean."""
    test = [_label(d) for d in domains if d.split == TEST]
    return [IN_DISTRIBUTION, *(d.name for d in domains if d.split == DEV), MEAN, *test, *([TEST_MEAN] if test else [])]


def unseen_table_rows(rows: dict[str, dict], domains: list[UnseenDomain]) -> list[dict]:
    """One flat row per model: perplexity on the held-out split, on each genre, and the dev and test means.
    Rows of earlier runs (Austen alone, as `heldback_perplexity`) read as far as they go."""
    table = []
    for name, row in rows.items():
        if "unseen_perplexity" not in row:  # measured on the held-out blocks only
            continue
        test, test_mean = read_test_figures(row)
        flat = {"model": name, IN_DISTRIBUTION: row.get("perplexity"), MEAN: row.get("unseen_ppl_mean"),
                TEST_MEAN: test_mean}
        for d in domains:
            flat[_label(d)] = test.get(d.name) if d.split == TEST else row["unseen_perplexity"].get(d.name)
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
    ax.set(title="perplexity on held-out, dev and test text", ylabel="perplexity (log scale)", yscale="log")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _intervals(rows: dict[str, dict], field: str, what: str) -> str:
    found = [f"{name} {_interval(row[field])}" for name, row in rows.items() if row.get(field)]
    return f"95% intervals of the {what} (blocks as samples): " + "; ".join(found) + ".\n\n" if found else ""


def unseen_section(rows: dict[str, dict], domains: list[UnseenDomain], png: Path) -> str:
    """Markdown for report.md: the table, the plot (written to `png`) and what each genre is."""
    columns = unseen_columns(domains)
    table = unseen_table_rows(rows, domains)
    plot_unseen(table, columns, png)
    sources = "\n".join(
        f"- `{d.name}` ({d.split}): {d.genre}; {d.origin}; "
        + (f"{d.blocks.shape[0]} blocks of {d.blocks.shape[1]} tokens from {d.documents} documents"
           if d.blocks is not None else "not measured")
        + "".join(f"; {note}" for note in d.notes) for d in domains)
    return (markdown_table(table, ["model", *columns])
            + f"\n![unseen text]({png.name})\n\n"
            + _intervals(rows, "unseen_ppl_mean_ci95", MEAN) + _intervals(rows, "test_ppl_mean_ci95", TEST_MEAN) +
            "Text of genres this run never calibrates, searches or trains on; documents that the run's data holds "
            "are left out (by text hash). *Dev* genres are the ones settings are chosen on; *test* genres are "
            f"never used to choose anything, only reported. `{MEAN}` and `{TEST_MEAN}` are geometric means over "
            f"each set's genres (`{TEST_MEAN}` only when every test genre is measured).\n\n"
            + sources + "\n")
