"""A sliced model exported shard by shard equals the one sliced in memory and saved."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from evoprune.arch.export import export_checkpoint
from evoprune.arch.streamed_export import export_sliced
from evoprune.errors import UserError
from evoprune.levels.budget import make_budget, uniform_genotype
from evoprune.darwinlm import pipeline as darwin

from .test_streamed_kl import _random_genotype


def _weights(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.mark.parametrize("shard_bytes", [2**30, 20_000])
def test_streamed_export_writes_what_slicing_and_saving_write(tiny_db, tmp_path, shard_bytes):
    cfg, dense, db, blocks, teacher = tiny_db
    g = _random_genotype(db, 3)
    spec, replace = db.stitch(list(g.attention), list(g.mlp), dense.adapter)
    sliced = dense.adapter.slice(dense.model, spec, replace)
    export_checkpoint(sliced, tmp_path / "whole", tokenizer=dense.tokenizer, spec=spec)
    export_sliced(dense.model, dense.adapter, spec, replace, tmp_path / "streamed", tokenizer=dense.tokenizer,
                  max_shard_bytes=shard_bytes)
    whole, streamed = _weights(tmp_path / "whole"), _weights(tmp_path / "streamed")
    assert whole.keys() == streamed.keys()
    assert all(torch.equal(whole[k], streamed[k]) for k in whole)
    shards = sorted((tmp_path / "streamed").glob("*.safetensors"))
    if shard_bytes < 2**30:
        assert len(shards) > 2
        index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(streamed) and set(index["weight_map"].values()) == {
            s.name for s in shards}
    else:
        assert [s.name for s in shards] == ["model.safetensors"]
    config = {k: v for k, v in json.loads((tmp_path / "whole" / "config.json").read_text()).items()
              if k != "transformers_version"}
    assert {k: v for k, v in json.loads((tmp_path / "streamed" / "config.json").read_text()).items()
            if k != "transformers_version"} == config
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed", trust_remote_code=True)
    with torch.no_grad():
        assert torch.allclose(reloaded(blocks).logits, sliced(blocks).logits, atol=1e-5)


def test_a_uniform_genotype_exports_as_the_stock_class(tiny_db, tmp_path):
    cfg, dense, db, blocks, teacher = tiny_db
    table = darwin.cost_table(db, "params")
    g = uniform_genotype(table, make_budget(table, table.full() * 0.5))
    spec, replace = db.stitch(list(g.attention), list(g.mlp), dense.adapter)
    export_sliced(dense.model, dense.adapter, spec, replace, tmp_path / "u", max_shard_bytes=20_000)
    config = json.loads((tmp_path / "u" / "config.json").read_text())
    if spec.is_uniform():
        assert "auto_map" not in config and not (tmp_path / "u" / "modeling_evoprune.py").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "u", trust_remote_code=True)
    sliced = dense.adapter.slice(dense.model, spec, replace)
    with torch.no_grad():
        assert torch.allclose(reloaded(blocks).logits, sliced(blocks).logits, atol=1e-5)


def test_an_existing_folder_is_not_overwritten(tiny_db, tmp_path):
    cfg, dense, db, blocks, teacher = tiny_db
    g = _random_genotype(db, 1)
    spec, replace = db.stitch(list(g.attention), list(g.mlp), dense.adapter)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(UserError):
        export_sliced(dense.model, dense.adapter, spec, replace, tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
