"""Sequential re-fit: exact least squares, nothing changes on an unpruned model, and a pruned model's output
projections move towards their targets on every module, for every family."""

from __future__ import annotations

import random

import pytest
import torch

from evoprune.arch.adapter import adapter_for
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.obs.refit import REFIT_TARGETS, _LeastSquares, refit, refitted_weights
from evoprune.weights.compute_dtype import inference_slice
from evoprune_tests import random_spec, stitched_first_mlp


def test_least_squares_equals_lstsq_without_damping():
    torch.manual_seed(0)
    a, y = torch.randn(300, 12, dtype=torch.float64), torch.randn(300, 5, dtype=torch.float64)
    fit = _LeastSquares(5, 12)
    for chunk in range(0, 300, 70):
        fit.add(a[chunk:chunk + 70], y[chunk:chunk + 70])
    w = fit.solve(torch.zeros(5, 12, dtype=torch.float64), percdamp=0.0)
    expected = torch.linalg.lstsq(a, y).solution.T
    assert torch.allclose(w, expected, atol=1e-8)
    residual = ((y - a @ w.T) ** 2).sum() / (y ** 2).sum()
    assert fit.error(w) == pytest.approx(float(residual), rel=1e-6)


def test_damping_pulls_towards_the_starting_weights():
    torch.manual_seed(1)
    a, y = torch.randn(8, 12, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)  # fewer tokens than inputs
    fit = _LeastSquares(3, 12)
    fit.add(a, y)
    w0 = torch.randn(3, 12, dtype=torch.float64)
    near, far = fit.solve(w0, percdamp=100.0), fit.solve(w0, percdamp=0.01)
    assert (near - w0).norm() < (far - w0).norm()
    assert fit.error(far) <= fit.error(near) <= fit.error(w0)


def _logits(model, blocks):
    with torch.no_grad():
        return model(input_ids=blocks).logits


@pytest.mark.parametrize("target", REFIT_TARGETS)
def test_an_unpruned_model_is_left_as_it_is(tiny_model, target):
    adapter = adapter_for(tiny_model.config)
    full = SubnetSpec.full(adapter.shape(tiny_model))
    pruned = inference_slice(tiny_model, adapter, full, {})
    blocks = torch.randint(0, 99, (6, 16))
    before = _logits(pruned, blocks)
    report = refit(tiny_model, pruned, adapter, full.kept_layers(), blocks, batch_size=2, target=target,
                   percdamp=0.01, progress=False)
    assert torch.allclose(_logits(pruned, blocks), before, atol=1e-4)
    assert all(r.error_after < 1e-6 for r in report)


@pytest.mark.parametrize("target", REFIT_TARGETS)
def test_every_module_of_a_pruned_model_moves_towards_its_target(tiny_model, target):
    adapter = adapter_for(tiny_model.config)
    spec = random_spec(adapter.shape(tiny_model), random.Random(3), keep_hidden=True, p_no_attention=0.2,
                       p_no_mlp=0.2)
    pruned = inference_slice(tiny_model, adapter, spec, {})
    blocks = torch.randint(0, 99, (8, 16))
    report = refit(tiny_model, pruned, adapter, spec.kept_layers(), blocks, batch_size=4, target=target,
                   progress=False)
    kept = sum(ls.has_attention for ls in spec.layers) + sum(bool(ls.neurons) for ls in spec.layers)
    assert len(report) == kept
    assert all(r.error_after <= r.error_before + 1e-9 for r in report)
    assert any(r.error_after < 0.9 * r.error_before for r in report)


def test_refitted_weights_rebuild_the_refitted_model(tiny_llama):
    adapter = adapter_for(tiny_llama.config)
    spec = random_spec(adapter.shape(tiny_llama), random.Random(5), keep_hidden=True, p_no_attention=0, p_no_mlp=0)
    pruned = inference_slice(tiny_llama, adapter, spec, {})
    blocks = torch.randint(0, 99, (4, 16))
    refit(tiny_llama, pruned, adapter, spec.kept_layers(), blocks, batch_size=2, target="dense", progress=False)
    rebuilt = inference_slice(tiny_llama, adapter, spec,
                              refitted_weights(pruned, adapter, spec.kept_layers(), adapter.parameter_name))
    assert torch.allclose(_logits(rebuilt, blocks), _logits(pruned, blocks), atol=1e-5)


def test_sliced_hidden_channels_are_refused(tiny_llama):
    adapter = adapter_for(tiny_llama.config)
    spec = random_spec(adapter.shape(tiny_llama), random.Random(2), keep_hidden=False)
    pruned = inference_slice(tiny_llama, adapter, spec, {})
    with pytest.raises(ValueError, match="hidden"):
        refit(tiny_llama, pruned, adapter, spec.kept_layers(), torch.randint(0, 99, (2, 8)), progress=False)


def test_the_dense_model_and_the_stitched_weights_are_left_unchanged(tiny_llama):
    adapter, spec, name, replace, stitched, dense_state = stitched_first_mlp(tiny_llama)
    pruned = inference_slice(tiny_llama, adapter, spec, replace)
    refit(tiny_llama, pruned, adapter, spec.kept_layers(), torch.randint(0, 99, (4, 16)), batch_size=2,
          target="dense", progress=False)
    assert torch.equal(replace[name], stitched)
    assert all(torch.equal(v, dense_state[k]) for k, v in tiny_llama.state_dict().items())
    assert not torch.equal(adapter.mlp_output(adapter.layers(pruned)[0]).weight, stitched)


def test_a_dropped_layer_pairs_every_later_layer_with_its_own_dense_layer(tiny_model):
    """With the first layer gone and the rest full, the `self` target is each full module's own dense output:
    a re-fit that paired pruned layer j with dense layer j would move the weights."""
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    spec = SubnetSpec(shape, [LayerSpec([], [], []), *SubnetSpec.full(shape).layers[1:]], None, {}).validate()
    pruned = inference_slice(tiny_model, adapter, spec, {})
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    report = refit(tiny_model, pruned, adapter, spec.kept_layers(), torch.randint(0, 99, (6, 16)), batch_size=2,
                   target="self", progress=False)
    assert {r.layer for r in report} == set(spec.kept_layers()) and 0 not in {r.layer for r in report}
    assert all(torch.allclose(v, before[k], atol=1e-5) for k, v in pruned.state_dict().items())
    names = refitted_weights(pruned, adapter, spec.kept_layers(), adapter.parameter_name)
    assert all(".layers.0." not in name for name in names) and any(".layers.1." in name for name in names)
