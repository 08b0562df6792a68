"""The database stores its level weights in the model's dtype, or in a smaller one on request."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open

from evoprune.errors import UserError
from evoprune.models import load_model
from evoprune.obs.database import Database, DatabaseSettings

from .test_database_key import SETTINGS, calibration


def test_bfloat16_storage_halves_the_database_and_keeps_the_stitched_weights_close(model_dir, tmp_path):
    dense = load_model(str(model_dir))
    blocks = calibration()
    full = Database.build(dense.model, dense.adapter, blocks, SETTINGS, tmp_path / "fp32", batch_size=2,
                          progress=False)
    half = Database.build(dense.model, dense.adapter, blocks, dataclasses.replace(SETTINGS, storage_dtype="bfloat16"),
                          tmp_path / "bf16", batch_size=2, progress=False)
    with safe_open(half.path / "layer_000.safetensors", "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if k.endswith(".weight")}
    assert dtypes == {torch.bfloat16}
    assert half.size_bytes() < 0.6 * full.size_bytes()
    genes = [1] * full.shape.num_layers
    _, fp32_weights = full.stitch(genes, genes, dense.adapter)
    spec, bf16_weights = half.stitch(genes, genes, dense.adapter)
    assert fp32_weights.keys() == bf16_weights.keys() and fp32_weights
    for k, w in fp32_weights.items():
        assert torch.allclose(bf16_weights[k].float(), w, rtol=1e-2, atol=1e-3)
    sliced = dense.adapter.slice(dense.model, spec, bf16_weights)
    assert next(sliced.parameters()).dtype == torch.float32  # computed in the model's dtype


def test_storage_dtype_is_part_of_the_database_identity(model_dir, tmp_path):
    dense = load_model(str(model_dir))
    blocks = calibration()
    Database.build(dense.model, dense.adapter, blocks, SETTINGS, tmp_path / "db", batch_size=2, progress=False)
    with pytest.raises(UserError, match="storage_dtype"):
        Database.load(tmp_path / "db", dense.model, dense.adapter,
                      dataclasses.replace(SETTINGS, storage_dtype="bfloat16"), blocks)
    with pytest.raises(UserError, match="storage_dtype"):
        DatabaseSettings(storage_dtype="int8").check()
