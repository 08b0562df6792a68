"""Perplexity on unseen text: per domain, their geometric mean, and the held-back source apart.

The domains and how they are kept apart from the run's data are in `data.unseen` and
`data.unseen_sources`. Every model of a run is measured on the same blocks.
"""

from __future__ import annotations

import math

from torch import nn

from ..config import RunConfig
from ..data.unseen import UnseenDomain, unseen_domains
from .perplexity import mean_nll


def load_unseen(cfg: RunConfig, tokenizer) -> list[UnseenDomain] | None:
    """The run's unseen-text domains, or None when `eval.unseen` is off."""
    if not cfg.eval.unseen:
        return None
    return unseen_domains(tokenizer, cfg.data.source, cfg.data.text_field, cfg.data.seq_len, cfg.eval.unseen_blocks)


def unseen_perplexity(model: nn.Module, domains: list[UnseenDomain], batch_size: int,
                      progress: bool = False, streamed: bool = False) -> dict[str, float | None]:
    """{domain: perplexity} over every domain (held-back included); None for a domain without text here.
    With `streamed`, computed layer by layer (see `mean_nll`)."""
    return {d.name: None if d.blocks is None else math.exp(mean_nll(model, d.blocks, batch_size, progress, streamed))
            for d in domains}


def geometric_mean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def unseen_metrics(model: nn.Module, domains: list[UnseenDomain], batch_size: int, progress: bool = False,
                   streamed: bool = False) -> dict:
    """A model's row fields: `unseen_perplexity` {domain: ppl} and their geometric mean `unseen_ppl_mean` over
    the domains that are not held back, and `heldback_perplexity` (None when that text is not here)."""
    by_domain = unseen_perplexity(model, domains, batch_size, progress, streamed)
    heldback = [d.name for d in domains if d.heldback]
    unseen = {d.name: by_domain[d.name] for d in domains if not d.heldback}
    return {"unseen_perplexity": unseen,
            "unseen_ppl_mean": geometric_mean([v for v in unseen.values() if v is not None]),
            "heldback_perplexity": by_domain[heldback[0]] if heldback else None}


def describe_unseen(domains: list[UnseenDomain]) -> dict:
    """metrics.json's account of the unseen text: each domain's genre, origin, size and notes."""
    return {d.name: d.describe() for d in domains}
