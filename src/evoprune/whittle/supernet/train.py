"""Weight-sharing supernet training (whittle): many sub-networks per step on one set of weights.

Sampling rules per optimizer step:
- `sandwich`: the largest network, the smallest, and `random_subnets` random ones. The largest
  learns from the data (LM loss); the others learn from the largest's distribution (in-place
  distillation: forward KL, reverse KL or Jensen-Shannon), or from the data with `distill=none`.
- `random`: `random_subnets` random sub-networks, each with the LM loss.

Every sub-network runs as a masked view of the one model (`MaskedSubnet`), so gradients of all
of them add up on the shared weights before one AdamW step (the project's optimizer and
schedule from `evoprune.train`). A checkpoint (weights, optimizer, schedule, sampler RNG, step)
is written atomically every `checkpoint_every` steps; a rerun resumes from it and reaches the
same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ...arch.adapter import ModelAdapter
from ...arch.spec import SubnetSpec
from ...atomic import staged_dir, write_text
from ...errors import UserError
from ...rundir import refuse_changed
from ...evaluation.blocks import check_blocks, next_token_logits
from ...modes import train_mode
from ...training.rng import restore_rng, rng_state
from ...training import TrainConfig, build_optimizer, build_scheduler, lm_loss
from ...training.batches import micro_batches
from ...training.step import apply_step
from .distill import DIVERGENCES, divergence
from .masked import MaskedSubnet

SAMPLING = ("sandwich", "random")
SpecSampler = Callable[[random.Random], SubnetSpec]


@dataclass(frozen=True)
class SupernetConfig:
    steps: int = 100
    sampling: str = "sandwich"
    random_subnets: int = 2  # random sub-networks per step
    distill: str = "forward_kl"  # forward_kl | reverse_kl | js | none (LM loss for every sub-network)
    batch_size: int = 1  # blocks per step
    lr: float = 1e-4
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float | None = 1.0
    checkpoint_every: int = 25
    seed: int = 0

    def problems(self) -> list[str]:
        p = []
        if self.steps <= 0 or self.batch_size <= 0 or self.checkpoint_every <= 0:
            p.append("supernet steps, batch_size and checkpoint_every must be positive")
        if self.sampling not in SAMPLING:
            p.append(f"supernet sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if self.distill not in DIVERGENCES + ("none",):
            p.append(f"supernet distill must be one of {', '.join(DIVERGENCES + ('none',))}, got {self.distill!r}")
        if self.sampling == "random" and self.random_subnets <= 0:
            p.append("random sampling needs random_subnets >= 1")
        return p


@dataclass
class SupernetResult:
    steps: int
    history: list[dict]


def _subnets(cfg: SupernetConfig, rng: random.Random, sample: SpecSampler,
             smallest: SubnetSpec) -> list[tuple[str, SubnetSpec | None]]:
    randoms = [("random", sample(rng)) for _ in range(cfg.random_subnets)]
    if cfg.sampling == "sandwich":
        return [("largest", None), ("smallest", smallest)] + randoms
    return randoms


def _checkpoint_files(folder: Path) -> tuple[Path, Path, Path]:
    return folder / "model.safetensors", folder / "optimizer.pt", folder / "state.json"


def _save(folder: Path, model, optimizer, scheduler, rng: random.Random, step: int, history: list[dict],
          config: dict) -> None:
    with staged_dir(folder, force=True) as tmp:
        weights, opt, state = _checkpoint_files(tmp)
        save_model(model, str(weights))
        buffer = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, buffer)
        opt.write_bytes(buffer.getvalue())
        write_text(state, json.dumps({"step": step, "config": config, "rng": rng_state(rng),
                                      "history": history}))


def _load(folder: Path, model, optimizer, scheduler, config: dict) -> tuple[int, random.Random, list[dict]]:
    weights, opt, state_file = _checkpoint_files(folder)
    try:
        state = json.loads(state_file.read_text())
        saved = state["config"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"supernet checkpoint {folder} is corrupt; delete it to train from the start") from None
    refuse_changed(folder, saved, config, "supernet checkpoint")
    load_model(model, str(weights))
    bundle = torch.load(opt, weights_only=True)
    optimizer.load_state_dict(bundle["optimizer"])
    scheduler.load_state_dict(bundle["scheduler"])
    torch.set_rng_state(bundle["torch_rng"])
    return int(state["step"]), restore_rng(state["rng"]), list(state["history"])


def train_supernet(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, sample: SpecSampler,
                   smallest: SubnetSpec, cfg: SupernetConfig, checkpoint_dir: Path, progress: bool = True,
                   stop_after: int | None = None) -> SupernetResult:
    """Train `model` in place as a supernet; resumes from `checkpoint_dir` when it holds a checkpoint.

    Args:
        sample: draws a random sub-network (a SubnetSpec of `model`) from the search space.
        smallest: the smallest sub-network of the space (sandwich rule).
        stop_after: end after this many steps in this call (tests use it to simulate a kill).
    """
    problems = cfg.problems()
    if problems:
        raise UserError("; ".join(problems))
    blocks = check_blocks(blocks)
    config = {**dataclasses.asdict(cfg), "blocks": list(blocks.shape), "model": adapter.shape(model).to_dict()}
    train_cfg = TrainConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule,
                            grad_clip=cfg.grad_clip, seed=cfg.seed)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, cfg.steps)
    step, rng, history = 0, random.Random(cfg.seed), []
    if (checkpoint_dir / "state.json").exists():
        step, rng, history = _load(checkpoint_dir, model, optimizer, scheduler, config)
    else:
        torch.manual_seed(cfg.seed)
    view = MaskedSubnet(model, adapter)
    device = next(model.parameters()).device
    bar = tqdm(total=cfg.steps, initial=step, desc="supernet", disable=not progress)
    done_here = 0
    try:
        with train_mode(model):
            while step < cfg.steps and (stop_after is None or done_here < stop_after):
                batch = micro_batches(blocks, step * cfg.batch_size % blocks.shape[0], cfg.batch_size)[0][0].to(device)
                optimizer.zero_grad(set_to_none=True)
                record, teacher = {"step": step + 1}, None
                for name, spec in _subnets(cfg, rng, sample, smallest):
                    view.use(spec)
                    logits = next_token_logits(model, batch)
                    if name == "largest" or cfg.distill == "none" or teacher is None:
                        loss = lm_loss(logits, batch)
                    else:
                        loss = divergence(logits, teacher, cfg.distill)
                    if name == "largest":
                        teacher = logits.detach()
                    loss.backward()
                    record.setdefault(name, []).append(round(float(loss.detach()), 5))
                apply_step(optimizer, cfg.grad_clip, scheduler)
                step += 1
                done_here += 1
                history.append(record)
                bar.update(1)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    _save(checkpoint_dir, model, optimizer, scheduler, rng, step, history, config)
    finally:
        view.remove()
        bar.close()
        optimizer.zero_grad(set_to_none=True)
    return SupernetResult(step, history)
