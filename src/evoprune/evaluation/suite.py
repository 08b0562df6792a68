"""Measure several models side by side on the same held-out blocks: size, perplexity, KL, speed."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..arch.adapter import adapter_for
from ..arch import params
from ..assets import cache_dir
from ..config import EvalConfig
from ..data.unseen import UnseenDomain
from ..fingerprint import weights_fingerprint
from .heldout import HeldoutFigures, heldout_figures
from .latency import compare_latency
from .perplexity import mean_nll
from .quality_cache import cached_quality, quality_key
from .streamed_choice import use_streamed
from .teacher import TeacherCache, kl_to_teacher
from .teacher_subset import TeacherSubset
from .unseen import unseen_metrics

# the columns of the result table of every run report (dense, baselines, pruned)
METRIC_COLUMNS = ["model", "params", "block_params", "perplexity", "perplexity_ci95", "kl_to_teacher", "prefill_tokens_per_s",
                  "decode_tokens_per_s", "prefill_speedup", "decode_speedup", "ideal_speedup"]

log = logging.getLogger(__name__)


def teacher_cache_path(teacher_id: str, blocks: torch.Tensor, top_k: int, temperature: float = 1.0) -> Path:
    """Where the teacher distribution for these blocks (at this softmax temperature) lives in the user cache.

    Args:
        teacher_id: what the distribution is a function of: the teacher's `weights_fingerprint`.
    """
    key = teacher_id.encode() + str(tuple(blocks.shape)).encode() + blocks.numpy().tobytes() + str(top_k).encode()
    if temperature != 1.0:
        key += f"|temperature={float(temperature)!r}".encode()
    digest = hashlib.sha256(key).hexdigest()[:20]
    return cache_dir() / "teacher" / f"{digest}.safetensors"


def teacher_for(teacher: PreTrainedModel, label: str, blocks: torch.Tensor, cfg: EvalConfig,
                batch_size: int, progress: bool = True, temperature: float = 1.0) -> TeacherCache:
    """Load the cached teacher distribution for `blocks`, building it once if missing, unreadable or stale.

    The cache is keyed by the teacher's weights, config and dtype (`weights_fingerprint`), the
    blocks, top_k and `temperature` (1 for KL; distillation at another temperature, see
    `training.cached_teacher`), and used only if its header says it holds exactly that.

    Args:
        label: names the teacher in log messages (a path or name; not part of the key).
    """
    teacher_id = weights_fingerprint(teacher)
    path = teacher_cache_path(teacher_id, blocks, cfg.top_k, temperature)
    if path.exists():
        try:
            cache = TeacherCache.load(path, blocks)
            cache.check_teacher(teacher_id, temperature)
            return cache
        except Exception as e:  # a stale or corrupt cache is rebuilt, not fatal
            log.warning("rebuilding teacher cache %s: %s", path, e)
    log.info("computing the teacher distribution of %s (weights %s) on %d blocks", label, teacher_id[:12],
             len(blocks))
    return TeacherCache.build(teacher, blocks, path, top_k=cfg.top_k, batch_size=batch_size, progress=progress,
                              temperature=temperature, teacher_id=teacher_id)


def size_row(model: PreTrainedModel) -> dict:
    shape = adapter_for(model.config).shape(model)
    return {"params": params.total_params(shape), "block_params": params.block_params(shape),
            "flops_per_token": params.flops_per_token(shape)}


def evaluate_models(models: dict[str, PreTrainedModel], eval_blocks: torch.Tensor, teacher: TeacherCache | None,
                    cfg: EvalConfig, batch_size: int, progress: bool = True,
                    unseen: list[UnseenDomain] | None = None, unchanged: frozenset[str] = frozenset(),
                    heldout_only: frozenset[str] = frozenset()) -> dict[str, dict]:
    """Rows of metrics, one per model name, all measured on the same blocks in one run.

    With `unseen` domains (see `evaluation.unseen.load_unseen`), every row also gets their perplexities.
    Perplexities are computed layer by layer when `cfg.streamed` says so for the model (`use_streamed`).

    Latency is measured round-robin across the models (see `compare_latency`), so machine noise
    hits them alike; speedups are relative to the first model.

    Args:
        unchanged: names of models loaded as they are on disk (the dense model), whose quality figures are
            read from the quality cache when measured before on the same blocks (`quality_cache.py`).
        heldout_only: names of reference models, measured on the first `cfg.reference_blocks` held-out blocks
            alone, not on the unseen text (such as the uniform genotype: a third of a darwin run's evaluation).
    """
    rows: dict[str, dict] = {}
    for name, model in models.items():
        streamed = use_streamed(cfg.streamed, model)
        blocks, teacher_of = eval_blocks, teacher
        if name in heldout_only:
            blocks, teacher_of = reference_subset(eval_blocks, teacher, cfg.reference_blocks)

        def measure(model=model, streamed=streamed, name=name, eval_blocks=blocks, teacher=teacher_of) -> dict:
            own = teacher_own_figures(model, teacher) if name in unchanged else None
            if own is not None:  # the teacher itself: its NLL was kept when its cache was built, its KL is 0
                figures = own.row()
            elif teacher is not None and not streamed:  # perplexity and KL from the same forward passes
                figures = heldout_figures(model, eval_blocks, teacher, batch_size, progress).row()
            else:
                nll = mean_nll(model, eval_blocks, batch_size=batch_size, progress=progress, streamed=streamed)
                figures = {"eval_nll": nll, "perplexity": float(torch.tensor(nll).exp())}
                if teacher is not None:
                    figures["kl_to_teacher"] = kl_to_teacher(model, eval_blocks, teacher, batch_size=batch_size,
                                                             progress=progress)
            if unseen is not None and name not in heldout_only:
                figures.update(unseen_metrics(model, unseen, batch_size, progress, streamed=streamed))
            return figures

        figures = cached_quality(quality_key(model, blocks, teacher_of, batch_size, unseen, streamed), measure) \
            if name in unchanged else measure()
        rows[name] = {"model": name, **size_row(model), **figures, "heldout_blocks": len(blocks)}
    if cfg.latency:
        results = compare_latency(models, batch_size=cfg.batch_size, prompt_len=cfg.prompt_len,
                                  new_tokens=cfg.new_tokens, warmup=cfg.warmup, repeats=cfg.repeats)
        base = next(iter(results.values()))
        for name, res in results.items():
            rows[name].update(
                prefill_tokens_per_s=res.prefill_tokens_per_s,
                decode_tokens_per_s=res.decode_tokens_per_s,
                prefill_speedup=res.prefill_tokens_per_s / base.prefill_tokens_per_s,
                decode_speedup=res.decode_tokens_per_s / base.decode_tokens_per_s,
                weights_mb=res.weights_bytes / 2**20,
                kv_cache_mb=res.kv_cache_bytes / 2**20,
            )
    first = next(iter(rows.values()))
    for row in rows.values():
        row["ideal_speedup"] = first["flops_per_token"] / row["flops_per_token"]
    return rows


def teacher_own_figures(model: PreTrainedModel, teacher: TeacherCache | TeacherSubset | None) -> HeldoutFigures | None:
    """The held-out figures of `model` when it is the teacher whose cache kept its own NLL, else None."""
    if teacher is None or teacher.temperature != 1 or teacher.teacher_id is None:
        return None
    nll = teacher.teacher_nll()
    if nll is None or weights_fingerprint(model) != teacher.teacher_id:
        return None
    return HeldoutFigures(nll, torch.zeros_like(nll))


def reference_subset(blocks: torch.Tensor, teacher: TeacherCache | None,
                     n: int | None) -> tuple[torch.Tensor, TeacherCache | TeacherSubset | None]:
    """The first `n` of the held-out `blocks` and their teacher distribution (all of them when `n` is None or
    not smaller)."""
    if n is None or n >= len(blocks):
        return blocks, teacher
    if teacher is None:
        return blocks[:n], None
    subset = TeacherSubset(teacher, blocks, list(range(n)))
    return subset.blocks, subset
