"""Supernet training: shared weights learn, losses are per sub-network, a killed run resumes exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from evoprune_tests import CASES_BY_ID
from evoprune.arch.adapter import adapter_for
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.errors import UserError
from evoprune.evaluation.blocks import next_token_logits
from evoprune.whittle.supernet.distill import DIVERGENCES, divergence
from evoprune.whittle.supernet.masked import MaskedSubnet
from evoprune.whittle.supernet.train import SupernetConfig, train_supernet


def nested(shape, fraction: float) -> SubnetSpec:
    """The first `fraction` of KV groups and neurons in every layer (an importance-sorted space)."""
    layers = []
    for layer in shape.layers:
        kv = list(range(max(1, round(layer.num_kv_heads * fraction))))
        layers.append(LayerSpec.from_groups(layer, kv, list(range(layer.heads_per_group)),
                                            list(range(max(1, round(layer.intermediate_size * fraction))))))
    return SubnetSpec(shape, layers)


def setup(seed=0):
    model = CASES_BY_ID["llama-gqa"].build()
    adapter = adapter_for(model.config)
    shape = adapter.shape(model)
    blocks = torch.randint(0, model.config.vocab_size, (6, 12), generator=torch.Generator().manual_seed(seed))
    return model, adapter, shape, blocks


def sampler(shape):
    return lambda rng: nested(shape, rng.choice([0.25, 0.5, 0.75, 1.0]))


def test_divergences_are_zero_at_equality_and_positive_otherwise():
    a, b = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    for kind in ("forward_kl", "reverse_kl", "js"):
        assert float(divergence(a, a, kind)) == pytest.approx(0, abs=1e-6)
        assert float(divergence(a, b, kind)) > 0
    assert float(divergence(a, b, "js")) <= torch.log(torch.tensor(2.0)) + 1e-6


@pytest.mark.parametrize("sampling", ["sandwich", "random"])
def test_training_lowers_the_smallest_networks_loss(sampling, tmp_path):
    """The LM loss of every sub-network (distill='none'); in-place distillation is tested below."""
    model, adapter, shape, blocks = setup()
    cfg = SupernetConfig(steps=12, sampling=sampling, random_subnets=1, lr=3e-3, schedule="constant",
                         distill="none", checkpoint_every=100)
    result = train_supernet(model, adapter, blocks[:1], sampler(shape), nested(shape, 0.25), cfg, tmp_path / "ck",
                            progress=False)
    assert result.steps == 12 and (tmp_path / "ck" / "model.safetensors").exists()
    first, last = result.history[0], result.history[-1]
    if sampling == "sandwich":
        assert set(first) == {"step", "largest", "smallest", "random"}
        assert last["smallest"][0] < first["smallest"][0] and last["largest"][0] < first["largest"][0]
    else:
        assert set(first) == {"step", "random"}


def peaked(seed=0):
    """`setup` with a 30x output head: at random init every distribution is near uniform, so every KL is near 0;
    peaked outputs make the sub-networks' distributions differ."""
    model, adapter, shape, blocks = setup(seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model, adapter, shape, blocks


def divergence_to_largest(model, adapter, spec: SubnetSpec, batch: torch.Tensor, kind: str) -> float:
    view = MaskedSubnet(model, adapter)
    try:
        with torch.no_grad():
            view.use(None)
            largest = next_token_logits(model, batch)
            view.use(spec)
            return float(divergence(next_token_logits(model, batch), largest, kind))
    finally:
        view.remove()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_the_smallest_network_learns_from_the_largest_networks_output(kind, tmp_path):
    model, adapter, shape, blocks = peaked()
    smallest = nested(shape, 0.25)
    expected = divergence_to_largest(model, adapter, smallest, blocks[:1], kind)
    assert expected > 0.05
    cfg = SupernetConfig(steps=1, random_subnets=0, distill=kind, checkpoint_every=100)
    result = train_supernet(model, adapter, blocks[:1], sampler(shape), smallest, cfg, tmp_path / "ck", progress=False)
    assert result.history[0]["smallest"][0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("distill", ["forward_kl", "none"])
def test_a_smallest_network_equal_to_the_largest_has_zero_distillation_loss(distill, tmp_path):
    model, adapter, shape, blocks = peaked()
    cfg = SupernetConfig(steps=3, random_subnets=0, distill=distill, lr=1e-3, checkpoint_every=100)
    result = train_supernet(model, adapter, blocks[:1], sampler(shape), nested(shape, 1.0), cfg, tmp_path / "ck",
                            progress=False)
    for record in result.history:
        if distill == "none":  # the data's loss, not a divergence
            assert record["smallest"][0] == pytest.approx(record["largest"][0], abs=1e-4) and record["smallest"][0] > 1
        else:
            assert record["smallest"][0] == pytest.approx(0, abs=1e-5)


def test_inplace_distillation_lowers_the_smallest_networks_kl_to_the_largest(tmp_path):
    model, adapter, shape, blocks = peaked()
    smallest = nested(shape, 0.25)
    before = divergence_to_largest(model, adapter, smallest, blocks[:1], "forward_kl")
    cfg = SupernetConfig(steps=12, random_subnets=1, lr=1e-3, schedule="constant", checkpoint_every=100)
    assert cfg.distill == "forward_kl"  # the default: in-place distillation
    result = train_supernet(model, adapter, blocks[:1], sampler(shape), smallest, cfg, tmp_path / "kd", progress=False)
    after = divergence_to_largest(model, adapter, smallest, blocks[:1], "forward_kl")
    assert after < 0.5 * before
    assert result.history[-1]["smallest"][0] < 0.5 * result.history[0]["smallest"][0]
    without = peaked()[0]
    train_supernet(without, adapter, blocks[:1], sampler(shape), smallest,
                   dataclasses.replace(cfg, distill="none"), tmp_path / "lm", progress=False)
    assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(model.parameters(), without.parameters()))


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    cfg = SupernetConfig(steps=6, random_subnets=2, lr=1e-3, checkpoint_every=2, distill="js")
    straight, adapter, shape, blocks = setup()
    train_supernet(straight, adapter, blocks, sampler(shape), nested(shape, 0.25), cfg, tmp_path / "a", progress=False)
    killed = setup()[0]
    train_supernet(killed, adapter, blocks, sampler(shape), nested(shape, 0.25), cfg, tmp_path / "b", progress=False,
                   stop_after=4)
    resumed = setup()[0]  # a fresh process: the weights come from the checkpoint
    train_supernet(resumed, adapter, blocks, sampler(shape), nested(shape, 0.25), cfg, tmp_path / "b", progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(straight.state_dict().values(), setup()[0].state_dict().values()))
    with pytest.raises(UserError, match="other settings.*lr"):
        train_supernet(setup()[0], adapter, blocks, sampler(shape), nested(shape, 0.25),
                       SupernetConfig(steps=6, random_subnets=2, lr=2e-3, checkpoint_every=2, distill="js"),
                       tmp_path / "b", progress=False)


def test_bad_settings_are_named():
    model, adapter, shape, blocks = setup()
    with pytest.raises(UserError, match="sampling"):
        train_supernet(model, adapter, blocks, sampler(shape), nested(shape, 0.5), SupernetConfig(sampling="x"),
                       Path("/nonexistent"), progress=False)



