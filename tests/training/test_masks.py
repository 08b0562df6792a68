"""Fixed masks: masked entries are exactly zero after training, everything else trains."""

from __future__ import annotations

import copy

import pytest
import torch

from evoprune.errors import UserError
from evoprune.training import ParamMasks, TrainConfig, train_on_blocks

MASKED = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight",
          "model.layers.0.input_layernorm.weight", "lm_head.weight"]


def random_masks(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    masks = {name: torch.rand(params[name].shape, generator=g) < 0.5 for name in MASKED}
    masks[MASKED[1]] = masks[MASKED[1]].float()  # 0 / 1 floats work too
    return masks


def test_masked_entries_stay_exactly_zero_with_weight_decay(llama, blocks):
    masks = random_masks(llama)
    before = copy.deepcopy(llama.state_dict())
    cfg = TrainConfig(lr=5e-2, weight_decay=0.5, batch_size=2, grad_clip=None)
    result = train_on_blocks(llama, blocks, 6 * 32, cfg, masks=masks)
    assert result.steps == 6
    after = llama.state_dict()
    for name, mask in masks.items():
        keep = mask.bool()
        assert (~keep).any() and keep.any()
        assert torch.equal(after[name][~keep], torch.zeros(int((~keep).sum())))
        assert (after[name][keep] != before[name][keep]).all(), name  # every kept entry moved
    unmasked = "model.layers.1.mlp.up_proj.weight"
    assert (after[unmasked] != before[unmasked]).all()


def test_param_masks_validation(llama):
    good = torch.ones(37, dtype=torch.bool)
    with pytest.raises(UserError) as err:
        ParamMasks(llama, {"nope.weight": good, "model.layers.0.mlp.down_proj.weight": good,
                           "model.layers.0.input_layernorm.weight": torch.full((32,), 0.5)})
    msg = str(err.value)
    assert "nope.weight: no such parameter" in msg and "mask shape [37]" in msg and "0 / 1" in msg


def test_masks_zero_grads_and_count(llama):
    masks = ParamMasks(llama, random_masks(llama))
    assert len(masks) == len(MASKED)
    assert sum(masks.masked_counts().values()) > 0
    for p in llama.parameters():
        p.grad = torch.ones_like(p)
    masks.mask_grads_()
    for name, param, drop in masks.entries:
        assert (param.grad[drop] == 0).all() and (param.grad[~drop] == 1).all()


def test_tied_embeddings_can_be_masked_under_either_name(make_llama, blocks):
    model = make_llama(tie_word_embeddings=True)
    keep = torch.ones(99, 32, dtype=torch.bool)
    keep[:10] = False
    train_on_blocks(model, blocks, 2 * 16, TrainConfig(lr=1e-2, weight_decay=0.1), masks={"lm_head.weight": keep})
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (model.model.embed_tokens.weight[:10] == 0).all() and (model.model.embed_tokens.weight[10:] != 0).all()
