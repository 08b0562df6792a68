"""Perplexity on unseen text: per genre, and the geometric means of the dev genres and of the test genres.

The domains and how they are kept apart from the run's data are in `data.unseen` and
`data.unseen_sources`. Every model of a run is measured on the same blocks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import RunConfig
from ..data.hub import hub_of
from ..data.unseen import UnseenDomain, unseen_domains
from ..data.unseen_sources import DEV, HELDBACK_SOURCE, TEST
from .heldout import perplexity_interval
from .perplexity import block_nlls, mean_nll


def load_unseen(cfg: RunConfig, tokenizer) -> list[UnseenDomain] | None:
    """The run's unseen-text domains, or None when `eval.unseen` is off."""
    if not cfg.eval.unseen:
        return None
    return unseen_domains(tokenizer, cfg.data.source, cfg.data.text_field, cfg.data.seq_len, cfg.eval.unseen_blocks,
                          hub_of(cfg.data.source, cfg.data))


def unseen_nlls(model: nn.Module, domains: list[UnseenDomain], batch_size: int, progress: bool = False,
                streamed: bool = False) -> dict[str, torch.Tensor | float | None]:
    """{domain: per-block NLLs} over every domain (dev and test); None for a domain without text here.
    With `streamed`, computed layer by layer (see `mean_nll`), and then only the mean NLL (a float)."""
    def nlls(blocks):
        return mean_nll(model, blocks, batch_size, progress, True) if streamed else \
            block_nlls(model, blocks, batch_size, progress)
    return {d.name: None if d.blocks is None else nlls(d.blocks) for d in domains}


def _ppl(v: torch.Tensor | float | None) -> float | None:
    return None if v is None else math.exp(float(v.mean()) if torch.is_tensor(v) else v)


def unseen_perplexity(model: nn.Module, domains: list[UnseenDomain], batch_size: int,
                      progress: bool = False, streamed: bool = False) -> dict[str, float | None]:
    """{domain: perplexity} over every domain (dev and test); None for a domain without text here."""
    return {name: _ppl(v) for name, v in unseen_nlls(model, domains, batch_size, progress, streamed).items()}


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
    """A model's row fields on the dev and the test genres (`data.unseen_sources`).

    Dev (settings are chosen on these): `unseen_perplexity` {genre: ppl} and their geometric mean
    `unseen_ppl_mean` over the genres measured here. Test (nothing is ever chosen on these):
    `test_perplexity` {genre: ppl} and their geometric mean `test_ppl_mean`, None unless every test
    genre is measured (a mean over fewer genres is another figure); `heldback_perplexity` is the
    `austen` test genre under the name earlier runs gave it. A genre without text here is None.
    Measured block by block (not `streamed`), also the 95% intervals `unseen_ci95` / `test_ci95`
    {genre: [low, high]}, `unseen_ppl_mean_ci95`, `test_ppl_mean_ci95` and `heldback_ci95`.
    """
    by_domain = unseen_nlls(model, domains, batch_size, progress, streamed)
    dev = {d.name: by_domain[d.name] for d in domains if d.split == DEV}
    test = {d.name: by_domain[d.name] for d in domains if d.split == TEST}
    test_complete = bool(test) and all(v is not None for v in test.values())
    figures = {"unseen_perplexity": {name: _ppl(v) for name, v in dev.items()},
               "unseen_ppl_mean": geometric_mean([_ppl(v) for v in dev.values() if v is not None]),
               "test_perplexity": {name: _ppl(v) for name, v in test.items()},
               "test_ppl_mean": geometric_mean([_ppl(v) for v in test.values()]) if test_complete else None,
               "heldback_perplexity": _ppl(test.get(HELDBACK_SOURCE))}
    if not streamed:
        present = [v for v in dev.values() if v is not None]
        figures["unseen_ci95"] = {name: None if v is None else perplexity_interval(v) for name, v in dev.items()}
        figures["unseen_ppl_mean_ci95"] = geometric_mean_interval(present) if present else None
        figures["test_ci95"] = {name: None if v is None else perplexity_interval(v) for name, v in test.items()}
        figures["test_ppl_mean_ci95"] = geometric_mean_interval(list(test.values())) if test_complete else None
        figures["heldback_ci95"] = figures["test_ci95"].get(HELDBACK_SOURCE)
    return figures


def read_test_figures(row: dict) -> tuple[dict[str, float | None], float | None]:
    """A row's test genres {genre: ppl} and their mean, also from an earlier run's metrics.json, which knew only
    the held-back Austen text (`heldback_perplexity`) and no test mean."""
    if "test_perplexity" in row:
        return row["test_perplexity"], row.get("test_ppl_mean")
    return {HELDBACK_SOURCE: row.get("heldback_perplexity")}, None


def describe_unseen(domains: list[UnseenDomain]) -> dict:
    """metrics.json's account of the unseen text: each domain's genre, origin, size and notes."""
    return {d.name: d.describe() for d in domains}
