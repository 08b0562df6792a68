"""bench/darwinlm_levels.py (DarwinLM's database and level files as SubnetSpecs) on a tiny model; with a DarwinLM
checkout in $DARWINLM_REPO also bench/darwinlm_adapter.py end to end (its database and one generation)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from evoprune.errors import UserError
from evoprune.models import load_model, source_shape
from evoprune.weights.compute_dtype import inference_slice

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def levels_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("darwinlm_levels", None)
    import darwinlm_levels

    return darwinlm_levels


def _fake_database(dense, folder: Path, removed: dict[str, list[list[int]]], head_dim: int) -> None:
    """A database in DarwinLM's layout: per projection, level L zeroes `removed[name][L]` (heads of o_proj,
    neurons of down_proj) and moves the kept columns, as an OBS update would."""
    for name, per_level in removed.items():
        weight = dense.get_submodule(name).weight.detach()
        for level, units in enumerate(per_level):
            w = weight + 0.05 * level * torch.randn_like(weight)
            cols = [u * head_dim + j for u in units for j in range(head_dim)] if "o_proj" in name else units
            w[:, cols] = 0
            (folder / name).mkdir(parents=True, exist_ok=True)
            torch.save(w, folder / name / f"{level}.pth")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_level_file_becomes_a_spec_with_the_logits_of_darwinlms_dense_shape_model(levels_module, tiny_run_inputs,
                                                                                 tmp_path):
    d = levels_module
    dense = load_model(str(tiny_run_inputs / "dense"))
    shape = dense.adapter.shape(dense.model)  # 4 layers, 4 query heads in 2 KV groups, 48 neurons
    removed = {}
    for i in range(4):
        removed[d.ATTENTION.format(i)] = [[], [0], [0, 1], [0, 1, 2, 3]]  # level 1: groups keep 1 and 2 heads
        removed[d.MLP.format(i)] = [[], [3, 7, 40], list(range(0, 48, 2)), list(range(48))]
    _fake_database(dense.model, tmp_path, removed, shape.head_dim)
    lines = [f"{d.ATTENTION.format(0)}: 1", f"{d.MLP.format(0)}: 2", f"{d.ATTENTION.format(1)}: 2",
             f"{d.MLP.format(1)}: 0", f"{d.ATTENTION.format(2)}: 3", f"{d.MLP.format(2)}: 1",
             f"{d.ATTENTION.format(3)}: 0", f"{d.MLP.format(3)}: 3"]
    (tmp_path / "evo.txt").write_text("\n".join(lines))  # DarwinLM writes no final newline
    levels = d.read_level_file(tmp_path / "evo.txt")

    spec, replace, counts = d.spec_from_levels(shape, tmp_path, levels)
    pruned = inference_slice(dense.model, dense.adapter, spec, replace)
    reference = d.dense_shape_model(dense.model, tmp_path, levels)
    ids = torch.randint(0, 80, (2, 24))
    torch.testing.assert_close(_logits(pruned, ids), _logits(reference, ids), rtol=1e-4, atol=1e-5)

    assert [ls.heads for ls in spec.layers] == [[0, 1, 2, 3], [2, 3], [], [0, 1, 2, 3]]  # zeroed head 0 pads group 0
    assert [ls.kv_heads for ls in spec.layers] == [[0, 1], [1], [], [0, 1]]
    assert [len(ls.neurons) for ls in spec.layers] == [24, 48, 45, 0]
    assert counts["padded_heads"] == 1 and counts["kept_heads"] == 3 + 2 + 0 + 4
    assert counts["darwinlm_block_sparsity"] > counts["spec_block_sparsity"] > 0


def test_uniform_start_of_the_level_lists_removes_the_asked_share(levels_module, tiny_run_inputs, tmp_path):
    d = levels_module
    shape = source_shape("smollm2-135m")  # config only: 9 query heads of 64 in 3 KV groups, 1536 neurons
    for sparsity in (0.25, 0.5):
        attention, mlp, target = d.level_lists(shape, sparsity)
        assert len(attention) == len(mlp) == 10 and attention == sorted(set(attention)) and mlp == sorted(set(mlp))
        assert attention[-1] == 576 and mlp[-1] == 1536 and all(c % 64 == 0 for c in attention)
        assert all(n % 32 == 0 for n in mlp)
        layer = shape.layers[0]
        kept = d.LayerShape(9 - attention[target] // 64, 3, 1536 - mlp[target])
        share = 1 - d.params.layer_params(shape, kept) / d.params.layer_params(shape, layer)
        per_neuron = 3 * 576 / d.params.layer_params(shape, layer)
        assert abs(share - sparsity) <= 16 * per_neuron  # the MLP entry is rounded to a multiple of 32
    with pytest.raises(UserError, match="not a DarwinLM level line"):
        (tmp_path / "bad.txt").write_text("model.layers.0.self_attn.q_proj: 3\n")
        d.read_level_file(tmp_path / "bad.txt")


@pytest.mark.slow  # about a minute on a quiet machine (8 min at load 14): DarwinLM's database and one generation
@pytest.mark.skipif(not os.environ.get("DARWINLM_REPO"), reason="set DARWINLM_REPO to a DarwinLM checkout")
def test_darwinlm_code_builds_a_database_and_searches_on_cpu(levels_module, tiny_run_inputs, tmp_path, monkeypatch):
    d = levels_module
    import darwinlm_adapter as adapter

    path = tiny_run_inputs / "dense"
    dense = load_model(str(path))
    shape = dense.adapter.shape(dense.model)
    attention, mlp, target = d.level_lists(shape, 0.5, multiple=4)
    blocks = torch.randint(2, 82, (64, 32))
    seconds = adapter.build_database(os.environ["DARWINLM_REPO"], path, blocks, tmp_path / "db", attention, mlp,
                                     verbose=False)
    assert seconds > 0 and sorted(os.listdir(tmp_path / "db" / d.MLP.format(0))) == sorted(
        f"{k}.pth" for k in range(len(mlp)))
    record = adapter.run_search(os.environ["DARWINLM_REPO"], path, tmp_path / "db", tmp_path / "search",
                                adapter.BlockData(blocks), generations=1, target_level=target, offspring=4,
                                survivors=[2, 1], fitness_tokens=[128, 256])
    levels = d.read_level_file(record.configuration)
    assert len(levels) == 8 and sum(levels.values()) == 8 * target  # level switches keep the sum
    assert [s["candidates"] for s in record.stages] == [4, 3]  # the parent joins the last stage
    spec, replace, _ = d.spec_from_levels(shape, tmp_path / "db", levels)
    ids = torch.randint(2, 82, (2, 16))
    torch.testing.assert_close(_logits(inference_slice(dense.model, dense.adapter, spec, replace), ids),
                               _logits(d.dense_shape_model(dense.model, tmp_path / "db", levels), ids),
                               rtol=1e-4, atol=1e-5)
