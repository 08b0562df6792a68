"""A sharded checkpoint with a missing shard, or an index that names absent tensors: one line, exit 2."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from transformers import AutoConfig, LlamaConfig
from transformers.utils import logging as hf_logging

from evoprune.cli import main
from evoprune.errors import UserError
from evoprune.models import check_model_source
from evoprune.weights.random_checkpoint import write_random_checkpoint
from evoprune.weights.shard_index import check_sharded_index

INDEX = "model.safetensors.index.json"


@pytest.fixture
def sharded(tmp_path):
    config = LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=37, head_dim=8)
    return write_random_checkpoint(config, tmp_path / "ckpt", max_shard_bytes=8000)


def shards(folder) -> list:
    return sorted(folder.glob("model-*-of-*.safetensors"))


def edit_index(folder, change) -> None:
    index = json.loads((folder / INDEX).read_text())
    change(index["weight_map"])
    (folder / INDEX).write_text(json.dumps(index))


def test_a_complete_sharded_checkpoint_passes(sharded):
    assert len(shards(sharded)) >= 3
    check_sharded_index(sharded)
    path, config = check_model_source(str(sharded), with_tokenizer=False)
    assert path == sharded and config.num_hidden_layers == 2


def test_folders_without_an_index_pass(tmp_path, sharded):
    single = write_random_checkpoint(AutoConfig.from_pretrained(sharded), tmp_path / "single")
    check_sharded_index(single)
    check_sharded_index(tmp_path)


def test_missing_shard(sharded):
    gone = shards(sharded)[1]
    gone.unlink()
    with pytest.raises(UserError, match=f"names shard {gone.name}, which is missing from {sharded}"):
        check_sharded_index(sharded)


def test_several_missing_shards_are_counted(sharded):
    for shard in shards(sharded)[:2]:
        shard.unlink()
    with pytest.raises(UserError, match=r"\(and 1 more of its \d+ shards\)"):
        check_sharded_index(sharded)


def test_index_names_a_tensor_no_shard_holds(sharded):
    first = shards(sharded)[0].name
    edit_index(sharded, lambda weight_map: weight_map.update({"model.layers.7.mlp.up_proj.weight": first}))
    with pytest.raises(UserError, match=f"tensor model.layers.7.mlp.up_proj.weight in {first}, which does not hold"):
        check_sharded_index(sharded)


def test_index_points_a_tensor_at_the_wrong_shard(sharded):
    last = shards(sharded)[-1].name
    name = "model.layers.0.self_attn.q_proj.weight"
    weight_map = json.loads((sharded / INDEX).read_text())["weight_map"]
    assert weight_map[name] != last and list(weight_map.values()).count(weight_map[name]) > 1
    edit_index(sharded, lambda weight_map: weight_map.update({name: last}))
    with pytest.raises(UserError, match=f"tensor {name} in {last}, which does not hold it"):
        check_sharded_index(sharded)


def test_corrupt_index_json(sharded):
    (sharded / INDEX).write_text('{"weight_map": {"a": ')
    with pytest.raises(UserError, match=f"corrupt {INDEX} in {sharded}"):
        check_sharded_index(sharded)


@pytest.mark.parametrize("index", [{"metadata": {}}, {"weight_map": {}}, {"weight_map": ["a"]}, ["weight_map"]])
def test_index_without_weight_map(sharded, index):
    (sharded / INDEX).write_text(json.dumps(index))
    with pytest.raises(UserError, match="has no weight_map"):
        check_sharded_index(sharded)


def test_index_naming_a_file_outside_the_folder(sharded):
    edit_index(sharded, lambda weight_map: weight_map.update({"model.norm.weight": "../elsewhere.safetensors"}))
    with pytest.raises(UserError, match="model.norm.weight to '../elsewhere.safetensors'"):
        check_sharded_index(sharded)


def test_shard_on_disk_that_the_index_does_not_name(sharded):
    last = shards(sharded)[-1].name
    edit_index(sharded, lambda weight_map: [weight_map.pop(k) for k, v in list(weight_map.items()) if v == last])
    with pytest.raises(UserError, match=f"holds {last}, which {INDEX} does not name"):
        check_sharded_index(sharded)


def test_index_names_fewer_shards_than_their_names_count(sharded):
    last = shards(sharded)[-1]
    edit_index(sharded, lambda weight_map: [weight_map.pop(k) for k, v in list(weight_map.items()) if v == last.name])
    last.unlink()
    n = len(shards(sharded))
    with pytest.raises(UserError, match=f"names {n} shards, but their names say there are {n + 1}"):
        check_sharded_index(sharded)


def test_shards_without_an_index(sharded):
    (sharded / INDEX).unlink()
    with pytest.raises(UserError, match=f"holds shard files .* but no {INDEX}"):
        check_sharded_index(sharded)


def test_unreadable_shard(sharded):
    shard = shards(sharded)[0]
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(UserError, match=f"{shard.name} is not a readable safetensors file"):
        check_sharded_index(sharded)


def test_cli_refuses_a_missing_shard_in_one_line(tiny_run_inputs, tmp_path, capsys, caplog, monkeypatch):
    model = write_random_checkpoint(AutoConfig.from_pretrained(tiny_run_inputs / "dense"), tmp_path / "model",
                                    max_shard_bytes=4000, tokenizer_from=tiny_run_inputs / "dense")
    gone = shards(model)[1]
    gone.unlink()
    hf_logging._configure_library_root_logger()
    monkeypatch.setattr(hf_logging._default_handler, "stream", sys.stderr)
    out = tmp_path / "run"
    code = main([str(a) for a in ("eval", "--model", model, "--data", tiny_run_inputs / "corpus.txt", "--out", out,
                                  "data.seq_len=16", "data.eval_blocks=2", "eval.latency=false", "--quiet")])
    err = capsys.readouterr().err + "".join(f"{r.levelname} {r.name}: {r.getMessage()}\n"
                                            for r in caplog.records if r.levelno >= logging.WARNING)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("evoprune: error: ") and "Traceback" not in err, err
    assert f"names shard {gone.name}, which is missing from {model}" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".run*"))
