"""train_on_blocks: learning, determinism, exact token accounting, block order, modes."""

from __future__ import annotations

import copy

import pytest
import torch

from evoprune.errors import UserError
from evoprune.evaluation.perplexity import mean_nll
from evoprune.training import TrainConfig, plan_tokens, train_on_blocks


def test_overfits_a_few_blocks(llama, blocks_of):
    blocks = blocks_of(2, 16)
    before = mean_nll(llama, blocks)
    result = train_on_blocks(llama, blocks, 40 * 32, TrainConfig(lr=1e-2, batch_size=2))
    assert result.steps == 40 and len(result.losses) == 40
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.losses[0] == pytest.approx(before, abs=1e-5)  # same loss definition as the perplexity
    assert mean_nll(llama, blocks) < 0.5 * before
    assert not llama.training  # mode restored
    assert result.seconds > 0


def test_same_seed_and_inputs_give_bitwise_same_weights(llama, blocks):
    cfg = TrainConfig(lr=1e-3, weight_decay=0.1, batch_size=2, grad_accum=2, warmup_steps=1, schedule="cosine",
                      seed=3)
    a, b = copy.deepcopy(llama), copy.deepcopy(llama)
    torch.manual_seed(123)  # global RNG state before the call must not matter
    ra = train_on_blocks(a, blocks, 5 * 32, cfg, start_block=1)
    torch.manual_seed(456)
    rb = train_on_blocks(b, blocks, 5 * 32, cfg, start_block=1)
    assert ra.losses == rb.losses
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.mlp.down_proj.weight"],
                           llama.state_dict()["model.layers.0.mlp.down_proj.weight"])


# (tokens, batch_size, grad_accum, seq_len, n_blocks, start_block) -> (steps, tokens_seen, next_block)
ACCOUNTING = [
    ((64, 1, 1, 16, 6, 0), (4, 64, 4)),
    ((70, 1, 1, 16, 6, 0), (4, 64, 4)),  # 6 tokens left unused (< one micro-batch)
    ((96, 2, 1, 16, 6, 5), (3, 96, 5)),  # wraps around exactly once
    ((100, 2, 2, 8, 5, 3), (3, 96, 0)),  # 6 micro-batches of 16 tokens -> 3 steps of 2; 12 blocks from 3
    ((5 * 16, 1, 2, 16, 4, 1), (3, 80, 2)),  # 5 micro-batches -> steps of 2, 2, 1
    ((31, 3, 4, 10, 2, 1), (1, 30, 0)),  # a single partial step of one micro-batch of 3 blocks (wraps)
    ((32, 1, 1, 16, 6, 13), (2, 32, 3)),  # start_block is taken modulo n_blocks (13 -> 1)
]


@pytest.mark.parametrize("args,expected", ACCOUNTING, ids=[str(a) for a, _ in ACCOUNTING])
def test_token_accounting(make_llama, blocks_of, args, expected):
    tokens, batch_size, grad_accum, seq_len, n_blocks, start = args
    cfg = TrainConfig(batch_size=batch_size, grad_accum=grad_accum)
    plan = plan_tokens(tokens, seq_len, cfg)
    model = make_llama(num_hidden_layers=1)
    result = train_on_blocks(model, blocks_of(n_blocks, seq_len), tokens, cfg, start_block=start)
    assert (result.steps, result.tokens_seen, result.next_block) == expected
    assert (plan.steps, plan.tokens) == expected[:2]
    assert tokens - batch_size * seq_len < result.tokens_seen <= tokens
    assert len(result.losses) == result.steps


def test_blocks_are_consumed_cyclically_in_order(make_llama, blocks_of):
    """Block k of a run is (start + k) mod n_blocks, batched in order, micro-batches grouped into steps."""
    model = make_llama(num_hidden_layers=1)
    blocks = blocks_of(5, 8)
    seen = []
    model.model.embed_tokens.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    result = train_on_blocks(model, blocks, 7 * 8, TrainConfig(batch_size=2, grad_accum=2), start_block=3)
    assert result.steps == 1 + 1 and result.tokens_seen == 6 * 8 and result.next_block == (3 + 6) % 5
    expected = [blocks[[(3 + 2 * k + j) % 5 for j in range(2)]] for k in range(3)]
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(seen, expected))


def test_budget_below_one_micro_batch_is_a_user_error(llama, blocks):
    with pytest.raises(UserError, match=r"budget 31 .*64 tokens") as err:
        train_on_blocks(llama, blocks, 31, TrainConfig(batch_size=4))
    assert "batch_size 4" in str(err.value) and "seq_len 16" in str(err.value)
    with pytest.raises(UserError, match="budget"):
        train_on_blocks(llama, blocks, -5, TrainConfig())


def test_zero_budget_trains_nothing(llama, blocks):
    before = copy.deepcopy(llama.state_dict())
    result = train_on_blocks(llama, blocks, 0, TrainConfig(), start_block=2)
    assert (result.steps, result.tokens_seen, result.next_block, result.losses) == (0, 0, 2, [])
    assert all(torch.equal(before[k], v) for k, v in llama.state_dict().items())


def test_bad_inputs_are_user_errors(llama, blocks):
    with pytest.raises(UserError, match="start_block"):
        train_on_blocks(llama, blocks, 64, TrainConfig(), start_block=-1)
    with pytest.raises(UserError, match="vocabulary"):
        train_on_blocks(llama, blocks + 100, 64, TrainConfig())
    with pytest.raises(UserError, match="token blocks"):
        train_on_blocks(llama, blocks.float(), 64, TrainConfig())


def test_train_mode_during_run_restored_after(llama, blocks):
    modes = []
    llama.model.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    llama.train()
    train_on_blocks(llama, blocks, 32, TrainConfig())
    assert modes == [True, True] and llama.training
    llama.eval()
    train_on_blocks(llama, blocks, 16, TrainConfig())
    assert modes[-1] is True and not llama.training


def test_accumulated_step_equals_one_big_batch(llama, blocks):
    """Two micro-batches of 2 blocks accumulate to the same update as one batch of 4 blocks."""
    from evoprune.training import build_optimizer, train_mode, train_step

    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, grad_clip=0.5)
    a, b = copy.deepcopy(llama), copy.deepcopy(llama)
    with train_mode(a), train_mode(b):
        ra = train_step(a, [blocks[:2], blocks[2:4]], build_optimizer(a, cfg), cfg)
        rb = train_step(b, [blocks[:4]], build_optimizer(b, cfg), cfg)
    assert ra.micro_batches == 2 and rb.micro_batches == 1 and ra.lr == rb.lr == 1e-2
    assert ra.loss == pytest.approx(rb.loss, abs=1e-6) and ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-4, rtol=0)  # Adam step 1 ~ lr * sign(grad)
    assert all(p.grad is None for p in a.parameters())
