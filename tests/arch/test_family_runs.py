"""Phi-3 and OLMo-2 through the second-order database (on o_proj / down_proj, which neither family fuses), a whole
darwin run (OLMo-2), the uniform baseline, on tiny random models saved with the word tokenizer of the Llama run
tests; nas with importance-sorted weights is refused in one line (it reorders Llama-style layers only)."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import Olmo2Config, Olmo2ForCausalLM, Phi3Config, Phi3ForCausalLM

import evoprune
from evoprune.arch.adapter import adapter_for
from evoprune.cli import main
from evoprune.errors import UserError
from evoprune.models import load_model
from evoprune.obs.database import Database, DatabaseSettings
from evoprune_tests import CASES_BY_ID

SIZES = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
             head_dim=8, max_position_embeddings=256, eos_token_id=1, bos_token_id=1, pad_token_id=1)
FAMILIES = {"phi3": (Phi3Config, Phi3ForCausalLM), "olmo2": (Olmo2Config, Olmo2ForCausalLM)}
TINY = {"data.seq_len": 32, "data.calibration_blocks": 4, "data.eval_blocks": 2, "data.batch_size": 2,
        "eval.latency": False, "eval.unseen": False}
SEARCH = {**TINY, "database.num_levels": 4, "search.offspring": 2, "search.generations": 1,
          "search.train_tokens": [0], "search.fitness_tokens": [64], "search.survivors": [1]}


@pytest.fixture(params=list(FAMILIES))
def family_dir(request, tiny_run_inputs, tmp_path):
    """A tiny random model of the family with the Llama run tests' tokenizer."""
    config_class, model_class = FAMILIES[request.param]
    dense = tiny_run_inputs / "dense"
    folder = tmp_path / request.param
    torch.manual_seed(0)
    model_class(config_class(vocab_size=len(load_model(str(dense), with_tokenizer=True).tokenizer), **SIZES)) \
        .save_pretrained(folder)
    for f in dense.glob("*token*"):
        shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("case_id", ["phi3-gqa", "olmo2-mha-bias-tied"])
def test_database_levels_stitch_into_a_sliced_model(case_id, tmp_path):
    dense = CASES_BY_ID[case_id].build()
    adapter = adapter_for(dense.config)
    blocks = torch.randint(3, 99, (8, 24), generator=torch.Generator().manual_seed(0))
    db = Database.build(dense, adapter, blocks, DatabaseSettings(num_levels=4), tmp_path / "db", batch_size=4,
                        progress=False)
    layers = adapter.shape(dense).num_layers
    spec, replace = db.stitch([2] * layers, [1] + [3] * (layers - 1), adapter)
    assert replace and not spec.is_identity()
    stitched, plain = adapter.slice(dense, spec, replace), adapter.slice(dense, spec)
    assert sum(p.numel() for p in stitched.parameters()) == spec.num_params()
    for name, weight in replace.items():
        torch.testing.assert_close(stitched.get_parameter(name), weight)
    for built, expected in zip(adapter.sliced_layers(dense, spec, replace), adapter.layers(stitched), strict=True):
        assert all(torch.equal(t, expected.state_dict()[k]) for k, t in built.state_dict().items())

    @torch.no_grad()
    def first_layer_error(model):  # output of layer 0 (MLP pruned to level 1, compensated or not) against the dense
        out = model(input_ids=blocks, output_hidden_states=True).hidden_states[1]
        return (out - dense(input_ids=blocks, output_hidden_states=True).hidden_states[1]).pow(2).mean()

    only_mlp0, replace0 = db.stitch([3] * layers, [1] + [3] * (layers - 1), adapter)
    compensated, cut = adapter.slice(dense, only_mlp0, replace0), adapter.slice(dense, only_mlp0)
    assert first_layer_error(compensated) < first_layer_error(cut)
    assert torch.isfinite(stitched(input_ids=blocks).logits).all() and torch.isfinite(plain(input_ids=blocks).logits).all()


@pytest.mark.parametrize("family_dir", ["olmo2"], indirect=True)
def test_darwin_runs_and_exports(family_dir, tiny_run_inputs, tmp_path):
    corpus = str(tiny_run_inputs / "corpus.txt")
    result = evoprune.darwin(str(family_dir), tmp_path / "run", sparsity=0.4, data=corpus, overrides=SEARCH,
                             progress=False)
    assert result.spec.source.family == family_dir.name
    assert result.metrics["pruned"]["params"] == result.spec.num_params()
    assert 0.25 < result.spec.block_sparsity() < 0.55
    pruned = load_model(str(result.model_dir), with_tokenizer=False)
    assert pruned.adapter.shape(pruned.model) == result.spec.result_shape()
    assert sum(p.numel() for p in pruned.model.parameters()) == result.spec.num_params()
    assert result.metrics["pruned"]["kl_to_teacher"] > 0


def test_uniform_prune(family_dir, tiny_run_inputs, tmp_path):
    result = evoprune.prune(str(family_dir), tmp_path / "u", sparsity=0.4, data=str(tiny_run_inputs / "corpus.txt"),
                            overrides=TINY, progress=False)
    assert result.spec.is_uniform() and result.spec.source.family == family_dir.name
    model = load_model(str(result.model_dir), with_tokenizer=False).model
    assert type(model).__module__.startswith("transformers.models.")
    assert sum(p.numel() for p in model.parameters()) == result.spec.num_params()


def test_nas_importance_weights_refused(family_dir, tiny_run_inputs, tmp_path, capsys):
    code = main(["nas", "--model", str(family_dir), "--data", str(tiny_run_inputs / "corpus.txt"), "--weights",
                 "importance", "--out", str(tmp_path / "nas"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"not {family_dir.name}" in err and "--weights database" in err
    assert not (tmp_path / "nas").exists()


@pytest.mark.parametrize("family_dir", ["olmo2"], indirect=True)
def test_darwin_refuses_the_residual_refit_on_olmo2_before_work(family_dir, tiny_run_inputs, tmp_path):
    with pytest.raises(UserError, match="olmo2 normalizes each block's output") as info:
        evoprune.darwin(str(family_dir), tmp_path / "run", sparsity=0.4, data=str(tiny_run_inputs / "corpus.txt"),
                        overrides={**SEARCH, "refit.target": "residual"}, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
