"""Perplexity on unseen text: per domain, their geometric mean, and the held-back source apart.

The domains and how they are kept apart from the run's data are in `data.unseen` and
`data.unseen_sources`. Every model of a run is measured on the same blocks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import RunConfig
from ..data.unseen import UnseenDomain, unseen_domains
from .heldout import perplexity_interval
from .perplexity import block_nlls, mean_nll


def load_unseen(cfg: RunConfig, tokenizer) -> list[UnseenDomain] | None:
    """The run's unseen-text domains, or None when `eval.unseen` is off."""
    if not cfg.eval.unseen:
        return None
    return unseen_domains(tokenizer, cfg.data.source, cfg.data.text_field, cfg.data.seq_len, cfg.eval.unseen_blocks)


def unseen_nlls(model: nn.Module, domains: list[UnseenDomain], batch_size: int, progress: bool = False,
                streamed: bool = False) -> dict[str, torch.Tensor | float | None]:
    """{domain: per-block NLLs} over every domain (held-back included); None for a domain without text here.
    With `streamed`, computed layer by layer (see `mean_nll`), and then only the mean NLL (a float)."""
    def nlls(blocks):
        return mean_nll(model, blocks, batch_size, progress, True) if streamed else \
            block_nlls(model, blocks, batch_size, progress)
    return {d.name: None if d.blocks is None else nlls(d.blocks) for d in domains}


def unseen_perplexity(model: nn.Module, domains: list[UnseenDomain], batch_size: int,
                      progress: bool = False, streamed: bool = False) -> dict[str, float | None]:
    """{domain: perplexity} over every domain (held-back included); None for a domain without text here."""
    return {name: None if v is None else math.exp(float(v.mean()) if torch.is_tensor(v) else v)
            for name, v in unseen_nlls(model, domains, batch_size, progress, streamed).items()}


def geometric_mean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def geometric_mean_interval(nlls: list[torch.Tensor]) -> list[float]:
    """The 95% interval of the geometric mean of the domains' perplexities: exp of the mean of their mean NLLs,
    whose variance is the sum of the domains' squared standard errors over the number of domains squared."""
    means = [float(v.mean()) for v in nlls]
    variance = sum(float(v.var()) / len(v) for v in nlls if len(v) > 1) / len(nlls) ** 2
    centre, half = sum(means) / len(means), 1.96 * math.sqrt(variance)
    return [math.exp(centre - half), math.exp(centre + half)]


def unseen_metrics(model: nn.Module, domains: list[UnseenDomain], batch_size: int, progress: bool = False,
                   streamed: bool = False) -> dict:
    """A model's row fields: `unseen_perplexity` {domain: ppl} and their geometric mean `unseen_ppl_mean` over
    the domains that are not held back, and `heldback_perplexity` (None when that text is not here); measured
    block by block (not `streamed`), also the 95% intervals `unseen_ci95` {domain: [low, high]},
    `unseen_ppl_mean_ci95` and `heldback_ci95`."""
    by_domain = unseen_nlls(model, domains, batch_size, progress, streamed)

    def ppl(v):
        return None if v is None else math.exp(float(v.mean()) if torch.is_tensor(v) else v)
    heldback = [d.name for d in domains if d.heldback]
    unseen = {d.name: by_domain[d.name] for d in domains if not d.heldback}
    figures = {"unseen_perplexity": {name: ppl(v) for name, v in unseen.items()},
               "unseen_ppl_mean": geometric_mean([ppl(v) for v in unseen.values() if v is not None]),
               "heldback_perplexity": ppl(by_domain[heldback[0]]) if heldback else None}
    if not streamed:
        present = [v for v in unseen.values() if v is not None]
        figures["unseen_ci95"] = {name: None if v is None else perplexity_interval(v) for name, v in unseen.items()}
        figures["unseen_ppl_mean_ci95"] = geometric_mean_interval(present) if present else None
        figures["heldback_ci95"] = perplexity_interval(by_domain[heldback[0]]) \
            if heldback and by_domain[heldback[0]] is not None else None
    return figures


def describe_unseen(domains: list[UnseenDomain]) -> dict:
    """metrics.json's account of the unseen text: each domain's genre, origin, size and notes."""
    return {d.name: d.describe() for d in domains}
