"""Slow tests on the real embedded model (SmolLM2-135M, a GQA Llama): run with `-m slow`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from evoprune.arch import params
from evoprune.arch.export import export_checkpoint
from evoprune.arch.spec import SubnetSpec
from evoprune.models import load_model
from evoprune.obs.calibration import collect_stats
from evoprune.arch.target import resolve_target
from evoprune.baselines.uniform import uniform_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m")


def test_embedded_model_shape_and_exact_count(smollm):
    shape = smollm.adapter.shape(smollm.model)
    assert (shape.num_layers, shape.hidden_size, shape.head_dim) == (30, 576, 64)
    assert {(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in shape.layers} == {(9, 3, 1536)}
    assert shape.tied_embeddings
    assert params.total_params(shape) == sum(p.numel() for p in smollm.model.parameters())


def test_identity_slice_reproduces_dense_logits(smollm):
    ids = smollm.tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    spec = SubnetSpec.full(smollm.adapter.shape(smollm.model))
    sliced = smollm.adapter.slice(smollm.model, spec)
    with torch.inference_mode():
        assert torch.allclose(sliced(ids).logits, smollm.model(ids).logits, atol=1e-5)


def test_uniform_half_exports_and_loads_in_stock_transformers(smollm, tmp_path):
    model, tok, adapter = smollm.model, smollm.tokenizer, smollm.adapter
    shape = adapter.shape(model)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    stats = collect_stats(model, adapter, torch.randint(0, shape.vocab_size, (2, 64)), progress=False)
    spec = uniform_spec(shape, stats.head_energy(adapter, model), stats.neuron_energy(adapter, model),
                        resolve_target(shape, sparsity=0.5))
    assert abs(spec.block_sparsity() - 0.5) < 0.02
    pruned = adapter.slice(model, spec)
    assert sum(p.numel() for p in pruned.parameters()) == spec.num_params()
    export_checkpoint(pruned, tmp_path / "m", tokenizer=tok, spec=spec)
    with torch.inference_mode():
        expected = pruned(ids).logits[0, -1]
    script = (
        "import sys, json, torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}, trust_remote_code=True).eval();"
        f"t = AutoTokenizer.from_pretrained({str(tmp_path / 'm')!r});"
        "assert 'evoprune' not in sys.modules;"
        f"ids = torch.tensor([{ids[0].tolist()}]);"
        "out = m(ids).logits[0, -1].tolist();"
        "gen = m.generate(ids, max_new_tokens=8, do_sample=False);"
        "print(json.dumps({'logits': out, 'text': t.decode(gen[0])}))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch.allclose(torch.tensor(result["logits"]), expected, atol=1e-4)
    assert result["text"].startswith("The capital of France is")
