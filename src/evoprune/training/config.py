"""TrainConfig: the hyper-parameters of one short training run, validated up front."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

SCHEDULES = ("constant", "cosine")
LOSSES = ("lm", "kd", "lm+kd")


@dataclass
class TrainConfig:
    """Optimizer, schedule and loss settings shared by every evoprune training run.

    The defaults are DarwinLM's training-aware selection: AdamW at lr 1e-5, batch 1, constant lr.
    Construction validates every field and raises one UserError listing all problems.
    """

    lr: float = 1e-5  # peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay (matrices only, see build_optimizer)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    batch_size: int = 1  # blocks per micro-batch (one forward / backward)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping
    warmup_steps: int = 0  # linear warm-up: step s < W uses lr * (s + 1) / (W + 1)
    schedule: str = "constant"  # after warm-up: constant | cosine (to lr * min_lr_ratio at the last step)
    min_lr_ratio: float = 0.0  # final lr / peak lr for the cosine schedule
    seed: int = 0  # torch.manual_seed at the start of a run
    loss: str = "lm"  # lm | kd | lm+kd ((1 - kd_weight) * lm + kd_weight * kd); kd needs a teacher
    kd_temperature: float = 1.0  # softmax temperature T of the distillation term (scaled by T^2)
    kd_weight: float = 0.5  # weight of the kd term in lm+kd
    hidden_weight: float = 0.0  # + hidden_weight * MSE(last hidden states) with a teacher (0 = off)

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raise one UserError naming every invalid field; return self when all are valid."""
        problems = _problems(self)
        if problems:
            raise UserError("invalid TrainConfig: " + "; ".join(problems))
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.loss in ("kd", "lm+kd")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a plain dict (YAML section); unknown keys are a UserError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown TrainConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _problems(c: TrainConfig) -> list[str]:
    out: list[str] = []
    if not _is_real(c.lr) or c.lr <= 0:
        out.append(f"lr must be a positive number, got {c.lr!r}")
    if not _is_real(c.weight_decay) or c.weight_decay < 0:
        out.append(f"weight_decay must be >= 0, got {c.weight_decay!r}")
    if (not isinstance(c.betas, tuple) or len(c.betas) != 2
            or not all(_is_real(b) and 0 <= b < 1 for b in c.betas)):
        out.append(f"betas must be two numbers in [0, 1), got {c.betas!r}")
    if not _is_real(c.eps) or c.eps <= 0:
        out.append(f"eps must be a positive number, got {c.eps!r}")
    if not _is_int(c.batch_size) or c.batch_size < 1:
        out.append(f"batch_size must be a positive integer, got {c.batch_size!r}")
    if not _is_int(c.grad_accum) or c.grad_accum < 1:
        out.append(f"grad_accum must be a positive integer, got {c.grad_accum!r}")
    if c.grad_clip is not None and (not _is_real(c.grad_clip) or c.grad_clip <= 0):
        out.append(f"grad_clip must be a positive number or None (off), got {c.grad_clip!r}")
    if not _is_int(c.warmup_steps) or c.warmup_steps < 0:
        out.append(f"warmup_steps must be an integer >= 0, got {c.warmup_steps!r}")
    if c.schedule not in SCHEDULES:
        out.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
    if not _is_real(c.min_lr_ratio) or not 0 <= c.min_lr_ratio <= 1:
        out.append(f"min_lr_ratio must be in [0, 1], got {c.min_lr_ratio!r}")
    if not _is_int(c.seed):
        out.append(f"seed must be an integer, got {c.seed!r}")
    if c.loss not in LOSSES:
        out.append(f"loss must be one of {', '.join(LOSSES)}, got {c.loss!r}")
    if not _is_real(c.kd_temperature) or c.kd_temperature <= 0:
        out.append(f"kd_temperature must be a positive number, got {c.kd_temperature!r}")
    if not _is_real(c.kd_weight) or not 0 <= c.kd_weight <= 1:
        out.append(f"kd_weight must be in [0, 1], got {c.kd_weight!r}")
    if not _is_real(c.hidden_weight) or c.hidden_weight < 0:
        out.append(f"hidden_weight must be >= 0, got {c.hidden_weight!r}")
    elif c.hidden_weight > 0 and c.loss == "lm":
        out.append("hidden_weight > 0 needs a teacher loss (kd or lm+kd)")
    return out
