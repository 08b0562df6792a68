"""Run reports: a Markdown page with tables and PNG plots that a person would rather read than a log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .arch.spec import SubnetSpec  # noqa: E402
from .atomic import staged_file, write_text  # noqa: E402


def save_png(fig, path: Path) -> Path:
    """Write the matplotlib figure `fig` to `path` as a PNG, atomically, and close it."""
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_kept_per_layer(spec: SubnetSpec, path: Path) -> Path:
    """Bar charts of kept query heads, KV groups and MLP neurons per layer against the source."""
    n = spec.source.num_layers
    x = list(range(n))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), constrained_layout=True)
    dense_heads = [s.num_heads for s in spec.source.layers]
    axes[0].bar(x, dense_heads, color="#dddddd", label="source query heads")
    axes[0].bar(x, [len(ls.heads) for ls in spec.layers], color="#4c72b0", label="kept query heads")
    axes[0].plot(x, [len(ls.kv_heads) for ls in spec.layers], "o", color="#c44e52", label="kept KV groups")
    axes[0].set(title="attention", xlabel="layer", ylabel="heads")
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    axes[1].bar(x, [s.intermediate_size for s in spec.source.layers], color="#dddddd", label="source neurons")
    axes[1].bar(x, [len(ls.neurons) for ls in spec.layers], color="#55a868", label="kept neurons")
    axes[1].set(title="MLP", xlabel="layer", ylabel="neurons")
    axes[1].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    method = spec.meta.get("method", "sub-network")
    fig.suptitle(f"{method}: {spec.block_sparsity():.1%} of block parameters removed")
    return save_png(fig, path)


def plot_bars(values: dict[str, float], title: str, ylabel: str, path: Path, log: bool = False,
              size: tuple[float, float] = (5, 3.2)) -> Path:
    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    names = list(values)
    palette = ["#888888", "#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd"]
    ax.bar(names, [values[k] for k in names], color=[palette[i % len(palette)] for i in range(len(names))])
    ax.tick_params(axis="x", labelrotation=30 if len(names) > 3 else 0)
    for i, k in enumerate(names):
        ax.text(i, values[k], f"{values[k]:.3g}", ha="center", va="bottom", fontsize=9)
    ax.set(title=title, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    return save_png(fig, path)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(no rows)_\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):  # an interval
        return f"{_fmt(v[0])}–{_fmt(v[1])}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write `report.md`: a title and (heading, markdown body) sections."""
    body = [f"# {title}\n"] + [f"## {heading}\n\n{text}\n" for heading, text in sections]
    write_text(path, "\n".join(body))
    return path
