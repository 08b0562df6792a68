"""A family of sizes from one darwin run: one model per target, and the front they draw.

`evoprune darwin --sparsity 0.25,0.4,0.5,0.6 --out RUN` writes `RUN/sparsity-0.25/` ... (each a complete
darwin run folder: its search, model, spec, metrics and report, resumable on its own) from one database
and one set of replace-one scores, then `RUN/front.json`, `front.csv`, `front.png` and `report.md` (with the
MIP's predicted front of `RUN/predicted_front/`, see predicted_front.py).
Rerunning with one more size reuses everything and adds that point.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..atomic import write_json, write_text  # noqa: E402
from ..config import PruneConfig  # noqa: E402
from ..report import markdown_table, save_png, write_report  # noqa: E402

COLUMNS = ["size", "params", "block_sparsity", "kl_to_teacher", "perplexity", "unseen_ppl_mean", "test_ppl_mean",
           "heldback_perplexity", "decode_speedup", "prefill_speedup", "llamacpp_decode_speedup",
           "llamacpp_prefill_speedup", "uniform_kl", "uniform_perplexity"]


def size_label(size: PruneConfig) -> str:
    """The folder of one size of a family: `sparsity-0.25` or `params-81000000`."""
    return f"sparsity-{size.sparsity:g}" if size.sparsity is not None else f"params-{size.target_params}"


def front_row(folder: Path, label: str) -> dict:
    """One size's line of the front, from its run folder's metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    pruned, uniform, target = metrics["pruned"], metrics["uniform_same_database"], metrics.get("target") or {}
    return {"size": label, "params": pruned["params"], "block_sparsity": target.get("achieved_sparsity"),
            "kl_to_teacher": pruned.get("kl_to_teacher"), "perplexity": pruned["perplexity"],
            "unseen_ppl_mean": pruned.get("unseen_ppl_mean"), "test_ppl_mean": pruned.get("test_ppl_mean"),
            "heldback_perplexity": pruned.get("heldback_perplexity"),
            "decode_speedup": pruned.get("decode_speedup"), "prefill_speedup": pruned.get("prefill_speedup"),
            "uniform_kl": uniform.get("kl_to_teacher"), "uniform_perplexity": uniform["perplexity"],
            "folder": label}


def write_front(out: Path, labels: list[str], command: str = "", speeds: dict[str, dict] | None = None,
                sections: list[tuple[str, str]] = ()) -> list[dict]:
    """front.json, front.csv, front.png and report.md of the family in `out`, smallest model last.

    Args:
        speeds: llama.cpp figures per label and for "dense" (`family_speed.llamacpp_speeds`), or None.
        sections: more (heading, markdown) sections of the report, after the front (e.g. the predicted front).
    """
    speeds = speeds or {}
    rows = sorted(({**front_row(out / label, label), **speeds.get(label, {})} for label in labels),
                  key=lambda r: -r["params"])
    dense = json.loads((out / labels[0] / "metrics.json").read_text())["dense"]
    dense_figures = {k: dense.get(k) for k in ("params", "perplexity", "unseen_ppl_mean", "test_ppl_mean")}
    write_json(out / "front.json", {"dense": {**dense_figures, **speeds.get("dense", {})}, "front": rows})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS + ["folder"], lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "front.csv", text.getvalue())
    plot_front(rows, dense, out / "front.png")
    links = "\n".join(f"- [{r['size']}]({r['folder']}/report.md): {r['params']:,} parameters" for r in rows)
    write_report(out / "report.md", "evoprune darwin: a family of sizes", [
        ("Front", f"One database and one set of replace-one scores, {len(rows)} sizes. Dense: "
                  f"{dense['params']:,} parameters, held-out perplexity {dense['perplexity']:.4g}.\n\n"
                  + markdown_table(rows, COLUMNS) + "\n![front](front.png)\n"),
        *sections,
        ("Each size", links + (f"\n\nCommand: `{command}`" if command else "")),
    ])
    return rows


def plot_front(rows: list[dict], dense: dict, path: Path) -> Path:
    """KL, perplexity (held-out, dev and test text) and decode speedup against parameters, with the uniform genotype
    of each size."""
    params = [r["params"] / 1e6 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    axes[0].plot(params, [r["kl_to_teacher"] for r in rows], "o-", color="#c44e52", label="darwin")
    axes[0].plot(params, [r["uniform_kl"] for r in rows], "s--", color="#888888", label="uniform (same database)")
    axes[0].set(xlabel="parameters (M)", ylabel="KL to the dense model (held-out)", yscale="log")
    axes[1].plot(params, [r["perplexity"] for r in rows], "o-", color="#c44e52", label="darwin, held-out")
    axes[1].plot(params, [r["uniform_perplexity"] for r in rows], "s--", color="#888888", label="uniform, held-out")
    if all(r["unseen_ppl_mean"] is not None for r in rows):
        axes[1].plot(params, [r["unseen_ppl_mean"] for r in rows], "^-", color="#4c72b0", label="darwin, dev text")
    if all(r.get("test_ppl_mean") is not None for r in rows):
        axes[1].plot(params, [r["test_ppl_mean"] for r in rows], "v-", color="#8172b2", label="darwin, test text")
    axes[1].axhline(dense["perplexity"], color="#55a868", lw=1, label=f"dense ({dense['params'] / 1e6:.0f}M)")
    axes[1].set(xlabel="parameters (M)", ylabel="perplexity", yscale="log")
    if all(r.get("decode_speedup") is not None for r in rows):
        axes[2].plot(params, [r["decode_speedup"] for r in rows], "o-", color="#c44e52", label="transformers")
    if all(r.get("llamacpp_decode_speedup") is not None for r in rows):
        axes[2].plot(params, [r["llamacpp_decode_speedup"] for r in rows], "D-", color="#8172b2", label="llama.cpp f16")
    axes[2].axhline(1.0, color="#55a868", lw=1, label="dense")
    axes[2].set(xlabel="parameters (M)", ylabel="decode speedup over dense (batch 1)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_png(fig, path)
