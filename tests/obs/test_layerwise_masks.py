"""`run_layer_by_layer` gives every layer the mask of its own attention type, as a whole-model forward does."""

from __future__ import annotations

import pytest
import torch

from evoprune_tests import CASES_BY_ID
from evoprune.arch.adapter import adapter_for
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.weights.layerwise import capture_first_layer_inputs, run_layer_by_layer


def _blocks(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 99, (5, 24), generator=torch.Generator().manual_seed(seed))


def _layerwise_outputs(model, adapter, blocks, batch_size=2) -> list[torch.Tensor]:
    """Per layer, its outputs over all blocks, seen by a forward hook during `run_layer_by_layer`."""
    seen: dict[int, list[torch.Tensor]] = {}

    def attach(i, layer):
        def hook(module, args, out):
            seen.setdefault(i, []).append((out[0] if isinstance(out, tuple) else out).detach().clone())
        return [layer.register_forward_hook(hook)]

    run_layer_by_layer(model, adapter, blocks, batch_size, attach, lambda i, layer: None, progress=False)
    return [torch.cat(seen[i]) for i in range(len(adapter.layers(model)))]


@torch.inference_mode()
def _whole_model_outputs(model, adapter, blocks, batch_size=2) -> list[torch.Tensor]:
    """Per layer, its outputs over all blocks in ordinary whole-model forwards."""
    layers = adapter.layers(model)
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    handles = [layer.register_forward_hook(
        lambda module, args, out, i=i: seen[i].append((out[0] if isinstance(out, tuple) else out).detach().clone()))
        for i, layer in enumerate(layers)]
    try:
        for start in range(0, len(blocks), batch_size):
            model(input_ids=blocks[start:start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(seen[i]) for i in range(len(layers))]


@torch.inference_mode()
def _replay_layer0_kwargs(model, adapter, blocks, batch_size=2) -> list[torch.Tensor]:
    """The previous behaviour: layer 0's captured keyword arguments replayed for every layer."""
    inputs = capture_first_layer_inputs(model, adapter, blocks, batch_size)
    hidden, out = inputs.hidden, []
    for layer in adapter.layers(model):
        hidden = [(o[0] if isinstance(o, tuple) else o) for o in
                  (layer(h, **kw) for h, kw in zip(hidden, inputs.kwargs))]
        out.append(torch.cat(hidden))
    return out


def _without_first_attention(model, adapter):
    """`model` sliced with layer 0's attention removed (its MLP kept), everything else kept."""
    shape = adapter.shape(model)
    spec = SubnetSpec.full(shape)
    first = shape.layers[0]
    spec.layers[0] = LayerSpec.from_groups(first, [], [], list(range(first.intermediate_size)))
    return adapter.slice(model, spec.validate())


def test_hybrid_sliding_window_layers_get_their_own_mask():
    model = CASES_BY_ID["qwen2-mha-hybrid-sw4"].build()  # layer 0 full attention, layers 1-2 sliding window 4
    adapter = adapter_for(model.config)
    blocks = _blocks()
    layerwise = _layerwise_outputs(model, adapter, blocks)
    whole = _whole_model_outputs(model, adapter, blocks)
    for got, want in zip(layerwise, whole):
        torch.testing.assert_close(got, want)
    # the window is shorter than the blocks, so the old replay of layer 0's full mask differs
    assert not torch.allclose(_replay_layer0_kwargs(model, adapter, blocks)[-1], whole[-1], atol=1e-4)


def test_pruned_hybrid_without_attention_in_layer_0():
    dense = CASES_BY_ID["qwen2-mha-hybrid-sw4"].build()
    model = _without_first_attention(dense, adapter_for(dense.config)).eval()
    adapter = adapter_for(model.config)
    blocks = _blocks(1)
    for got, want in zip(_layerwise_outputs(model, adapter, blocks), _whole_model_outputs(model, adapter, blocks)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("case", ["llama-gqa", "mistral-gqa-sw4"])
def test_single_attention_type_is_unchanged(case):
    model = CASES_BY_ID[case].build()
    adapter = adapter_for(model.config)
    blocks = _blocks(2)
    layerwise = _layerwise_outputs(model, adapter, blocks)
    for got, old in zip(layerwise, _replay_layer0_kwargs(model, adapter, blocks)):
        assert torch.equal(got, old)
    for got, want in zip(layerwise, _whole_model_outputs(model, adapter, blocks)):
        torch.testing.assert_close(got, want)
