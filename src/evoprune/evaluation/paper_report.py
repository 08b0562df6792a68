"""The report section of the papers' WikiText-2 / C4 perplexity (`paper_perplexity.py`)."""

from __future__ import annotations

from ..report import markdown_table
from .paper_perplexity import PAPER_SETS


def paper_section(scores: dict[str, dict[str, dict]]) -> str:
    """A table of `scores` ({model: {set: {perplexity, windows, seq_len}}}) and how they were computed."""
    sets = list(next(iter(scores.values())))
    rows = [{"model": model, **{PAPER_SETS[s].title: f"{by_set[s]['perplexity']:.3f}" for s in sets}}
            for model, by_set in scores.items()]
    first = next(iter(scores.values()))
    facts = "; ".join(f"{PAPER_SETS[s].title}: {first[s]['windows']} windows of {first[s]['seq_len']} tokens"
                      for s in sets)
    return (markdown_table(rows, ["model"] + [PAPER_SETS[s].title for s in sets]) +
            f"\n{facts}. Computed as SparseGPT's datautils.py (and the papers after it): the split's texts joined "
            "(WikiText-2 with \"\\n\\n\", C4's first 1,100 validation documents with \" \"), tokenized once, "
            "non-overlapping windows scored without context, perplexity = exp(mean window NLL).\n")
