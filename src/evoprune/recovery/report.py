"""report.md of a training run: summary table, the train / held-out loss curves, perplexity on unseen text."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..evaluation.unseen_report import unseen_section  # noqa: E402
from ..memory import memory_section  # noqa: E402
from ..report import markdown_table, save_png, write_report  # noqa: E402
from .unseen import UnseenFigures  # noqa: E402


def plot_losses(records: list[dict], path: Path) -> Path:
    """Training objective per step and held-out LM loss against tokens trained."""
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    held_out = [(r["tokens"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    if train:
        ax.plot(*zip(*train), color="#4c72b0", lw=1, label="train objective")
    if held_out:
        ax.plot(*zip(*held_out), "o-", color="#c44e52", label="held-out LM loss (nats)")
    ax.set(xlabel="tokens trained", ylabel="loss", title="recovery training")
    ax.legend()
    return save_png(fig, path)


def write_train_report(folder: Path, title: str, summary: dict, records: list[dict], notes: list[str],
                       command: str, unseen: UnseenFigures | None = None, memory: dict | None = None) -> Path:
    plot_losses(records, folder / "loss.png")
    sections = [("Result", markdown_table([summary]) + "\n![loss curves](loss.png)\n")]
    if unseen is not None:
        rows = unseen.table_rows(summary["start_eval_ppl"], summary["final_eval_ppl"])
        sections.append(("Unseen text", unseen_section(rows, unseen.domains, folder / "unseen.png")))
    else:
        (folder / "unseen.png").unlink(missing_ok=True)  # left by an earlier attempt with eval.unseen on
    if notes:
        sections.append(("Notes", "\n".join(f"- {n}" for n in notes)))
    if memory is not None:
        sections.append(("Memory", memory_section(memory)))
    sections.append(("Reproduce", f"```\n{command}\n```\nMetrics per step: `metrics.jsonl`. Load the result with "
                                  "`AutoModelForCausalLM.from_pretrained('model', trust_remote_code=True)`."))
    return write_report(folder / "report.md", title, sections)
