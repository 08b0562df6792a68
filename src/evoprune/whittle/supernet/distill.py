"""In-place distillation losses: a sub-network learns the largest network's next-token distribution."""

from __future__ import annotations

import math

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "js")


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(a ‖ b), from log-probabilities over the last axis."""
    return (log_a.exp() * (log_a - log_b)).sum(-1).mean()


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """forward_kl = KL(teacher ‖ student), reverse_kl = KL(student ‖ teacher), js = Jensen-Shannon.

    The teacher's logits are treated as constants (no gradient flows into the largest network).
    """
    log_q = torch.log_softmax(student_logits.float(), dim=-1)
    log_p = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
    if kind == "forward_kl":
        return _kl(log_p, log_q)
    if kind == "reverse_kl":
        return _kl(log_q, log_p)
    if kind == "js":
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
        return 0.5 * (_kl(log_p, log_m) + _kl(log_q, log_m))
    raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")
