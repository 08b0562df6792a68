"""DarwinLM end to end on tiny Gemma-2 and Gemma-3 checkpoints: database, stitching, search, export, reload."""

from __future__ import annotations

import shutil

import pytest
import torch

from arch.test_gemma import CASES, GemmaCase
from darwinlm.test_pipeline import TINY
from evoprune.config import load_config
from evoprune.darwinlm import pipeline as darwin
from evoprune.arch.spec import SubnetSpec
from evoprune.cli import main
from evoprune.levels.genotype import Genotype
from evoprune.models import load_model
from evoprune.obs.database import Database


def gemma_inputs(tiny_run_inputs, tmp_path_factory, case_id):
    """A tiny Gemma checkpoint with the tiny run's word tokenizer (82 tokens) and its corpus."""
    root = tmp_path_factory.mktemp(case_id)
    case = CASES[case_id]
    model = GemmaCase(case.id, case.config_class, case.model_class, {**case.kwargs, "vocab_size": 82}).build()
    model.save_pretrained(root / "dense")
    for f in (tiny_run_inputs / "dense").glob("*token*"):
        shutil.copy(f, root / "dense" / f.name)
    shutil.copy(tiny_run_inputs / "corpus.txt", root / "corpus.txt")
    return root


@pytest.fixture(scope="module", params=["gemma2-softcap", "gemma3-local-rope"])
def gemma_run_inputs(request, tiny_run_inputs, tmp_path_factory):
    return gemma_inputs(tiny_run_inputs, tmp_path_factory, request.param)


def config(root, *extra):
    return load_config(None, [f"model.source={root / 'dense'}", f"data.source={root / 'corpus.txt'}", *TINY, *extra])


def test_database_stitches_the_full_genotype_to_the_dense_model(gemma_run_inputs, tmp_path):
    cfg = config(gemma_run_inputs)
    dense = load_model(cfg.model.source)
    db = Database.build(dense.model, dense.adapter, torch.randint(0, 80, (4, 32)), darwin.database_settings(cfg),
                        tmp_path / "db", batch_size=2, progress=False)
    n = dense.adapter.shape(dense.model).num_layers
    full = Genotype(tuple(db.num_levels("attention", i) - 1 for i in range(n)),
                    tuple(db.num_levels("mlp", i) - 1 for i in range(n)))
    spec, replace = db.stitch(list(full.attention), list(full.mlp), dense.adapter)
    assert spec.is_identity() and not replace
    ids = torch.randint(0, 80, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(dense.adapter.slice(dense.model, spec, replace)(ids).logits,
                                   dense.model(ids).logits, atol=1e-5, rtol=0)
    half = Genotype(tuple(1 for _ in range(n)), tuple(2 for _ in range(n)))
    spec, replace = db.stitch(list(half.attention), list(half.mlp), dense.adapter)
    model = dense.adapter.slice(dense.model, spec, replace)
    assert sum(p.numel() for p in model.parameters()) == spec.num_params()


def test_darwin_run_exports_a_model_that_reloads(tiny_run_inputs, tmp_path_factory, tmp_path):
    """The whole run on Gemma-3 (one family: a run takes minutes on 2 cores)."""
    root = gemma_inputs(tiny_run_inputs, tmp_path_factory, "gemma3-local-rope")
    out = tmp_path / "run"
    darwin.run(config(root, "eval.unseen=false"), out, progress=False)
    spec = SubnetSpec.load(out / "model" / "evoprune_spec.json")
    assert not spec.is_identity()
    loaded = load_model(str(out / "model"), with_tokenizer=False)
    assert loaded.adapter.shape(loaded.model) == spec.result_shape()
    assert sum(p.numel() for p in loaded.model.parameters()) == spec.num_params()
    ids = torch.randint(0, 80, (1, 20))
    with torch.no_grad():
        assert torch.isfinite(loaded.model(ids).logits).all()
    assert (out / "report.md").is_file() and (out / "metrics.json").is_file()


@pytest.mark.parametrize("command", ["darwin", "nas"])
def test_gguf_format_is_refused_before_any_work(tiny_run_inputs, tmp_path_factory, tmp_path, capsys, command):
    root = gemma_inputs(tiny_run_inputs, tmp_path_factory, "gemma2-softcap")
    out = tmp_path / "run"
    capsys.readouterr()  # the checkpoint's writing progress
    code = main([command, "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--format", "gguf",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "llama.cpp's gemma2 graph takes one head count and MLP width for every layer" in err
    assert not out.exists()
