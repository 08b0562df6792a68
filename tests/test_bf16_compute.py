"""bf16 compute, the path a GPU takes by default (`model.compute_dtype=auto` keeps bf16 weights in bf16 there),
run on the CPU by asking for it: loading, timing, pruning, the second-order database and the training-aware
darwin search."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from evoprune.cli import main
from evoprune.evaluation import measure_latency
from evoprune.models import load_model, resolve_compute_dtype
from evoprune.weights.compute_dtype import compute_dtype_of

BF16 = ["--dtype", "bfloat16", "model.compute_dtype=bfloat16"]
TINY = ["data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=4", "data.batch_size=2", "eval.repeats=1",
        "eval.prompt_len=8", "eval.new_tokens=4", "--quiet"]
DARWIN = ["database.num_levels=5", "search.offspring=3", "search.generations=3", "search.train_tokens=[0,64]",
          "search.fitness_tokens=[64,128]", "search.survivors=[2,1]", "search.lr=0.001", "--sparsity", "0.4"]


def stored_dtypes(folder) -> set[str]:
    dtypes = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            dtypes |= {str(f.get_slice(name).get_dtype()) for name in f.keys()}
    return dtypes


def test_the_gpu_default_is_bf16_compute_and_the_cpu_runs_it_when_asked(tiny_run_inputs):
    assert resolve_compute_dtype("auto", torch.bfloat16, "cuda:0") == torch.bfloat16
    loaded = load_model(str(tiny_run_inputs / "dense"), dtype="bfloat16", compute_dtype="bfloat16")
    assert compute_dtype_of(loaded.model) == torch.bfloat16
    timed = measure_latency(loaded.model, prompt_len=8, new_tokens=4, warmup=1, repeats=2)
    assert (timed.device, timed.dtype) == ("cpu", "bfloat16")  # the timing loop a GPU runs, less the synchronize
    assert all(math.isfinite(r) and r > 0 for r in timed.prefill_runs + timed.decode_runs)


def test_prune_computes_in_bf16_and_exports_bf16(tiny_run_inputs, tmp_path):
    out = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_run_inputs / "dense"), "--data", str(tiny_run_inputs / "corpus.txt"),
                 "--sparsity", "0.5", "--out", str(out), *BF16, *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pruned"]["block_params"] < metrics["dense"]["block_params"]
    assert all(math.isfinite(metrics[m]["perplexity"]) for m in ("dense", "pruned"))
    assert metrics["dense"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-3)  # the teacher is the same bf16 model
    assert stored_dtypes(out / "model") == {"BF16"}


def test_the_database_is_built_in_bf16_compute(tiny_run_inputs, tmp_path):
    out = tmp_path / "run"
    assert main(["database", "--model", str(tiny_run_inputs / "dense"), "--data", str(tiny_run_inputs / "corpus.txt"),
                 "--out", str(out), *BF16, *TINY, *DARWIN]) == 0
    index = json.loads((out / "database" / "index.json").read_text())
    assert index["layers"] == 4 and index["settings"]["storage_dtype"] == "model"
    floats = stored_dtypes(out / "database") - {"I32", "I64"}  # less the kept units' indices
    assert floats == {"BF16"}  # the levels' weights, stored in the model's dtype


@pytest.mark.slow
def test_darwin_runs_whole_in_bf16_compute(tiny_run_inputs, tmp_path):
    out = tmp_path / "run"  # the paper profile: survivors briefly trained (AdamW on bf16 weights), no replace-one
    assert main(["darwin", "--model", str(tiny_run_inputs / "dense"), "--data", str(tiny_run_inputs / "corpus.txt"),
                 "--out", str(out), "--profile", "paper", *BF16, *TINY, *DARWIN]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pruned"]["block_params"] < metrics["dense"]["block_params"]
    assert math.isfinite(metrics["pruned"]["kl_to_teacher"]) and metrics["pruned"]["kl_to_teacher"] >= 0
    assert stored_dtypes(out / "model") == {"BF16"}
