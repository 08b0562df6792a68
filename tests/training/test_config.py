"""TrainConfig validation and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest

from evoprune.errors import UserError
from evoprune.training import TrainConfig, build_optimizer, build_scheduler, lr_factor, param_groups


def test_defaults_are_darwinlm_selection():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.schedule, cfg.loss) == (1e-5, 1, 1, "constant", "lm")
    assert cfg.betas == (0.9, 0.95) and cfg.grad_clip == 1.0 and not cfg.uses_teacher


def test_every_problem_is_listed_in_one_user_error():
    with pytest.raises(UserError) as err:
        TrainConfig(lr=0, batch_size=0, schedule="linear", loss="mse", kd_weight=2.0, grad_clip=-1, betas=(0.9, 1.0))
    msg = str(err.value)
    assert "\n" not in msg
    for field in ("lr", "batch_size", "schedule", "loss", "kd_weight", "grad_clip", "betas"):
        assert field in msg


def test_from_dict_round_trip_and_unknown_keys():
    cfg = TrainConfig(lr=3e-4, schedule="cosine", loss="lm+kd", grad_clip=None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({"betas": [0.8, 0.9]}).betas == (0.8, 0.9)
    with pytest.raises(UserError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_lr_factor_warmup_then_cosine():
    cfg = TrainConfig(warmup_steps=3, schedule="cosine", min_lr_ratio=0.1)
    f = [lr_factor(s, cfg, 8) for s in range(8)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(f[-1], 0.1) and all(a > b for a, b in zip(f[3:], f[4:]))
    const = TrainConfig(warmup_steps=1)
    assert [lr_factor(s, const, 4) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(0, TrainConfig(schedule="cosine"), 1) == 1.0


def test_scheduler_follows_lr_factor(llama):
    cfg = TrainConfig(lr=1e-3, warmup_steps=2, schedule="cosine")
    opt = build_optimizer(llama, cfg)
    sched = build_scheduler(opt, cfg, 5)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1e-3 * lr_factor(s, cfg, 5) for s in range(5)])


def test_no_weight_decay_on_norms_and_only_trainable_params(llama):
    llama.model.embed_tokens.weight.requires_grad_(False)
    decay, no_decay = param_groups(llama, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert not any(p is llama.model.embed_tokens.weight for p in decay["params"])
    for p in llama.parameters():
        p.requires_grad_(False)
    with pytest.raises(UserError, match="no trainable"):
        build_optimizer(llama, TrainConfig())
