"""Training losses on token blocks: next-token cross-entropy and distillation from a teacher.

Both are token means over the seq_len - 1 next-token positions of every block, computed in float32
from the logits, the same positions and definition as `evaluation.perplexity.mean_nll` (so the LM
loss of a block equals its mean NLL, up to train/eval mode differences such as dropout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..evaluation.blocks import model_device, next_token_logits
from .cached_teacher import CachedTeacher
from .config import TrainConfig


@dataclass
class LossParts:
    """The objective of one micro-batch and its components (0-d tensors; the parts without grad)."""

    total: torch.Tensor
    lm: torch.Tensor | None = None
    kd: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def lm_loss(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, nats.

    Args:
        logits: [batch, seq_len - 1, vocab] float32 (from `next_token_logits`).
        batch: token ids [batch, seq_len]; position t predicts token t + 1.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student) between softmax(logits / T), times T².

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al.). At T = 1
    this is the same per-position KL that `evaluation.teacher` reports (full-vocabulary mode).
    """
    if student_logits.shape != teacher_logits.shape:
        raise UserError(f"teacher logits have shape {list(teacher_logits.shape)} but the student's have "
                        f"{list(student_logits.shape)}; distillation needs the same tokenizer and vocabulary")
    t = temperature
    log_q = torch.log_softmax(student_logits.float() / t, dim=-1)
    log_p = torch.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="sum")
    n_positions = student_logits.shape[0] * student_logits.shape[1]
    return kl / n_positions * (t * t)


def hidden_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the last hidden states (after the final norm) of student and teacher.

    Only defined when both keep the same hidden size (pruning heads, neurons or layers keeps it;
    pruning hidden channels does not).
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise UserError(f"hidden-state distillation needs equal hidden sizes, but the student's last hidden state "
                        f"has shape {list(student_hidden.shape)} and the teacher's {list(teacher_hidden.shape)}; "
                        "set hidden_weight=0")
    return F.mse_loss(student_hidden.float(), teacher_hidden.float())


def teacher_logits(teacher: nn.Module, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The teacher's fp32 next-token logits for `batch`, without grad, moved to `device`."""
    with torch.no_grad():
        return next_token_logits(teacher, batch.to(model_device(teacher))).to(device)


def _forward_with_hidden(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=batch, use_cache=False, output_hidden_states=True)
    return out.logits[:, :-1].float(), out.hidden_states[-1]


def compute_loss(model: nn.Module, batch: torch.Tensor, cfg: TrainConfig,
                 teacher: nn.Module | CachedTeacher | None = None) -> LossParts:
    """Forward `batch` ([batch, seq_len] ids on the model's device) and return cfg.loss's objective.

    "lm": cross-entropy; "kd": KL(teacher ‖ student) at cfg.kd_temperature; "lm+kd":
    (1 - kd_weight) * lm + kd_weight * kd. With cfg.hidden_weight > 0 (and a teacher model), plus
    hidden_weight * MSE of the last hidden states. The teacher is a model run online, or a
    `CachedTeacher` (its top-k distribution on the training blocks, from disk; see
    `cached_teacher`). The caller sets train / eval modes.
    """
    if cfg.loss == "lm":
        logits = next_token_logits(model, batch)
        lm = lm_loss(logits, batch)
        return LossParts(lm, lm.detach())
    if teacher is None:
        raise UserError(f"loss {cfg.loss!r} needs a teacher model; pass teacher= or use loss 'lm'")
    hidden = None
    if isinstance(teacher, CachedTeacher):
        if cfg.hidden_weight > 0:
            raise UserError("hidden-state distillation needs the teacher model; a cached teacher holds only its "
                            "output distribution (set hidden_weight=0 or run the teacher online)")
        logits = next_token_logits(model, batch)
        kd = teacher.kd_loss(logits, batch, cfg.kd_temperature)
    elif cfg.hidden_weight > 0:
        logits, student_hidden = _forward_with_hidden(model, batch)
        with torch.no_grad():
            t_logits, t_hidden = _forward_with_hidden(teacher, batch.to(model_device(teacher)))
        kd = kd_loss(logits, t_logits.to(logits.device), cfg.kd_temperature)
        hidden = hidden_loss(student_hidden, t_hidden.to(student_hidden.device))
    else:
        logits = next_token_logits(model, batch)
        kd = kd_loss(logits, teacher_logits(teacher, batch, logits.device), cfg.kd_temperature)
    if cfg.loss == "kd":
        total = kd
        lm = None
    else:
        lm = lm_loss(logits, batch)
        total = (1.0 - cfg.kd_weight) * lm + cfg.kd_weight * kd
    if hidden is not None:
        total = total + cfg.hidden_weight * hidden
    return LossParts(total, None if lm is None else lm.detach(), kd.detach(),
                     None if hidden is None else hidden.detach())
