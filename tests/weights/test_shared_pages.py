"""Two torchrun processes map the same weight pages: the resident weights are not doubled (measured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig

from evoprune.weights.random_checkpoint import write_random_checkpoint

SCRIPT = Path(__file__).with_name("shared_pages_script.py")


def test_two_processes_share_the_mapped_weights(tmp_path, tiny_run_inputs):
    config = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)
    model = write_random_checkpoint(config, tmp_path / "model", dtype=torch.float32)  # about 60 MB
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(SCRIPT), str(model), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    weights = ranks[0]["weights"]
    assert weights > 50 * 2**20
    for r in ranks:
        assert r["after"]["anon"] - r["before"]["anon"] < 0.3 * weights, "weights were copied into private memory"
        assert r["after"]["file"] - r["before"]["file"] > 0.9 * weights, "each process maps all the weights"
    # proportional set size splits a shared page between its mappers: a private copy each would add 2x the weights
    added = sum(r["after"]["pss"] - r["before"]["pss"] for r in ranks)
    assert added < 1.4 * weights, f"two processes added {added / weights:.2f}x the weights"
