"""Searches in the nemotron-nas space (darwin and nas) on a tiny model: every result exports to the format.

The tiny Llama has 640 neurons per MLP, so the space holds widths 256 and 512 and the full 640 (which
the export pads to 768): attention is whole or removed.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from evoprune.darwinlm import pipeline as darwin
from evoprune.cli import main
from evoprune.config import load_config
from evoprune.models import load_model
from evoprune.obs.database import Database
from evoprune.serving.nemotron_nas import export_nemotron_nas
from .test_nemotron_nas import assert_same_logits, mlx_logits

WIDTHS = {0, 256, 512, 640}  # the MLP widths of the space for 640 neurons
TINY = ["data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=4", "data.batch_size=2",
        "eval.latency=false", "database.num_levels=5", "search.offspring=3", "search.generations=2",
        "search.train_tokens=[0,0]", "search.fitness_tokens=[64,128]", "search.survivors=[2,1]",
        "search.fitness_pool=6", "search.replace_one_tokens=64", "prune.sparsity=0.4", "search.space=nemotron-nas"]


@pytest.fixture(scope="module")
def wide_mlp_inputs(tiny_run_inputs, tmp_path_factory):
    """The tokenizer and corpus of `tiny_run_inputs` with a 4-layer Llama of 640 neurons per MLP."""
    root = tmp_path_factory.mktemp("nemotron")
    tokenizer = AutoTokenizer.from_pretrained(tiny_run_inputs / "dense")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=640, head_dim=8, max_position_embeddings=256,
                         eos_token_id=1, bos_token_id=1, pad_token_id=1)
    LlamaForCausalLM(config).save_pretrained(root / "dense")
    tokenizer.save_pretrained(root / "dense")
    shutil.copyfile(tiny_run_inputs / "corpus.txt", root / "corpus.txt")
    return root


def check_exports(model_dir, out) -> float:
    """Export `model_dir` to Nemotron-NAS in `out` and return mlx-lm's largest logit difference to it."""
    export_nemotron_nas(model_dir, out)
    ids = torch.randint(3, 80, (2, 16))
    with torch.no_grad():
        expected = load_model(str(model_dir)).model(input_ids=ids).logits
    return assert_same_logits(expected, mlx_logits(out, ids))


def test_darwin_in_the_nemotron_space_yields_only_exportable_genotypes(wide_mlp_inputs, tmp_path):
    root = wide_mlp_inputs
    cfg = load_config(None, [f"model.source={root / 'dense'}", f"data.source={root / 'corpus.txt'}", *TINY])
    out = darwin.run(cfg, tmp_path / "run", progress=False)
    db = Database.load(out / "database")
    assert db.settings.space == "nemotron-nas"
    assert all({len(lv.heads) for lv in levels} <= {0, 4} for levels in db.levels["attention"])
    assert all({lv.width for lv in levels} <= WIDTHS for levels in db.levels["mlp"])
    spec = json.loads((out / "spec.json").read_text())
    assert all(len(ls["heads"]) in (0, 4) and len(ls["neurons"]) in WIDTHS for ls in spec["layers"])
    check_exports(out / "model", tmp_path / "nemotron")


def test_nas_in_the_nemotron_space_yields_only_exportable_configurations(wide_mlp_inputs, tmp_path):
    root = wide_mlp_inputs
    out = tmp_path / "n"
    assert main(["nas", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out),
                 "--quiet", "--trials", "5", "--sampler", "random", "--weights", "importance", "--space", "nemotron-nas",
                 "--sparsity-range", "full",
                 "--sparsity", "0.1", "data.seq_len=16", "data.calibration_blocks=2", "data.eval_blocks=2",
                 "data.batch_size=2"]) == 0
    rows = json.loads((out / "pareto.json").read_text())["front"]
    assert rows and all(r["hidden"] == 32 and r["kv_groups"] == 2 and r["heads_per_group"] == 2 for r in rows)
    assert all(r["mlp"] in WIDTHS for r in rows)
    assert json.loads((out / "nas_run.json").read_text())["prune"]["space"] == "nemotron-nas"
    check_exports(out / "picks" / "sparsity-ge-0.1", tmp_path / "nemotron")
