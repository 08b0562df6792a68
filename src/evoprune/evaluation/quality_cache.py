"""The quality figures of a model that does not change between runs (the dense model), measured once.

Every run of the same dense model on the same held-out and unseen blocks measured the same dense
perplexities and KL again: a third of a `darwin` run's evaluation. They are kept in
`cache_dir()/quality/<key>.json`, keyed by content like the teacher cache: the weights (`weights_fingerprint`:
config, dtype, every tensor), the dtype it computes in, the blocks, the teacher distribution, the
batch size and the layer-by-layer switch (both can move the last float bits). Speed is never cached:
it is measured side by side with the other models of the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Callable

import torch
from torch import nn

from ..assets import cache_dir
from ..atomic import write_json
from ..data.unseen import UnseenDomain
from ..fingerprint import tokens_fingerprint, weights_fingerprint
from ..weights.compute_dtype import compute_dtype_of
from .teacher import TeacherCache

log = logging.getLogger(__name__)

FORMAT = "evoprune.quality/3"  # 2: with the held-out intervals; 3: dev and test genres (test_perplexity, test_ppl_mean)


def quality_key(model: nn.Module, eval_blocks: torch.Tensor, teacher: TeacherCache | None, batch_size: int,
                unseen: list[UnseenDomain] | None, streamed: bool) -> dict:
    return {"format": FORMAT, "weights": weights_fingerprint(model), "compute_dtype": str(compute_dtype_of(model)),
            "blocks": tokens_fingerprint(eval_blocks), "teacher": str(teacher.path) if teacher is not None else None,
            "batch_size": batch_size, "streamed": bool(streamed),
            "unseen": None if unseen is None else [
                [d.name, d.split, None if d.blocks is None else tokens_fingerprint(d.blocks)] for d in unseen]}


def cached_quality(key: dict, measure: Callable[[], dict]) -> dict:
    """The figures saved under `key`, else `measure()` saved there."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "quality" / f"{digest}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved["key"] == key:
                log.info("quality figures of weights %s read from %s", key["weights"][:12], path)
                return saved["figures"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("quality cache %s is unreadable; measuring again", path)
    figures = measure()
    write_json(path, {"key": key, "figures": figures})
    return figures
