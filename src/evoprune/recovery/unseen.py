"""Perplexity on unseen text where a training run starts and where it ends.

The start figures are measured when the run directory's curves start and kept in `START_FILE`,
so a run killed and resumed reports the figures of the model it started from. Only the main
process measures and writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..atomic import write_json
from ..data.unseen import UnseenDomain
from ..evaluation.unseen import describe_unseen, unseen_metrics

log = logging.getLogger(__name__)

START_FILE = "unseen_start.json"


def keep_start_figures(out: Path, model: nn.Module, domains: list[UnseenDomain] | None, batch_size: int,
                       progress: bool = False) -> None:
    """Measure `model` on `domains` into `out/START_FILE`; with no domains (eval.unseen=false) drop a stale one."""
    path = out / START_FILE
    if domains is None:
        path.unlink(missing_ok=True)
        return
    figures = unseen_metrics(model, domains, batch_size, progress)
    write_json(path, {"unseen_text": describe_unseen(domains), "unseen_start": figures})


def read_start_figures(out: Path, domains: list[UnseenDomain]) -> tuple[dict | None, str | None]:
    """The start figures kept in `out`, or None and why they cannot be used."""
    path = out / START_FILE
    if not path.is_file():
        return None, f"{START_FILE} is missing (the run began with eval.unseen=false)"
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        figures, text = kept["unseen_start"], kept["unseen_text"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{path} is unreadable ({type(e).__name__})"
    if text != describe_unseen(domains):
        return None, ("they were measured on other unseen text (eval.unseen_blocks or the unseen-text assets "
                      "changed since the run began)")
    return figures, None


@dataclass
class UnseenFigures:
    """A run's perplexity on unseen text at its start (None when not known) and at its end."""

    domains: list[UnseenDomain]
    start: dict | None
    final: dict

    def metrics(self) -> dict:
        """metrics.json's `unseen_start`, `unseen_final` and `unseen_text`."""
        return {"unseen_start": self.start, "unseen_final": self.final, "unseen_text": describe_unseen(self.domains)}

    def summary(self) -> dict:
        """The summary row's dev and test means and the Austen test genre (`heldback`), at the start and at the end."""
        start = self.start or {}
        return {"start_unseen_ppl_mean": start.get("unseen_ppl_mean"),
                "final_unseen_ppl_mean": self.final["unseen_ppl_mean"],
                "start_test_ppl_mean": start.get("test_ppl_mean"),
                "final_test_ppl_mean": self.final.get("test_ppl_mean"),
                "start_heldback_ppl": start.get("heldback_perplexity"),
                "final_heldback_ppl": self.final["heldback_perplexity"]}

    def table_rows(self, start_eval_ppl: float, final_eval_ppl: float) -> dict[str, dict]:
        """Rows of the report's unseen-text table (see `evaluation.unseen_report`), each beside its held-out figure."""
        rows = {"start": {"perplexity": start_eval_ppl, **self.start}} if self.start is not None else {}
        return {**rows, "final": {"perplexity": final_eval_ppl, **self.final}}


def measure_unseen_figures(out: Path, model: nn.Module, domains: list[UnseenDomain], batch_size: int,
                           notes: list[str], progress: bool = False) -> UnseenFigures:
    """The trained `model`'s figures beside the kept start ones; a note in `notes` when the start is not known."""
    start, reason = read_start_figures(out, domains)
    if reason is not None:
        notes.append(f"perplexity on unseen text at the start is not known: {reason}")
        log.warning(notes[-1])
    return UnseenFigures(domains, start, unseen_metrics(model, domains, batch_size, progress))
