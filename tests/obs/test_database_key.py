"""A database belongs to all the weights, dtype and calibration tokens it was solved from, not to a model path."""

from __future__ import annotations

import pytest
import torch

from evoprune.errors import UserError
from evoprune.models import load_model
from evoprune.obs.database import Database, DatabaseSettings

SETTINGS = DatabaseSettings(num_levels=4, calibration="test")


def calibration(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(seed))


def build(model_dir, blocks, path) -> Database:
    dense = load_model(str(model_dir))
    return Database.build(dense.model, dense.adapter, blocks, SETTINGS, path, batch_size=2, progress=False)


def replace_with_changed_weights(folder) -> None:
    """Rewrite the model at `folder` with one attention input projection of a middle layer changed."""
    dense = load_model(str(folder))
    with torch.no_grad():
        dense.model.model.layers[1].self_attn.q_proj.weight.mul_(1.5)
    dense.model.save_pretrained(folder)


def test_weights_replaced_at_the_same_path_are_refused_and_rebuilt(model_dir, tmp_path):
    blocks = calibration()
    old = build(model_dir, blocks, tmp_path / "db")
    old_weight = old.weight("attention", 1, 1)
    replace_with_changed_weights(model_dir)
    dense = load_model(str(model_dir))
    with pytest.raises(UserError, match="different model"):
        Database.load(tmp_path / "db", dense.model, dense.adapter, SETTINGS)
    rebuilt = build(model_dir, blocks, tmp_path / "db")  # resuming into the same folder reuses no layer
    fresh = build(model_dir, blocks, tmp_path / "fresh")
    assert not torch.equal(rebuilt.weight("attention", 1, 1), old_weight)
    for layer in range(len(fresh.levels["attention"])):
        for kind in ("attention", "mlp"):
            a, b = rebuilt.weight(kind, layer, 1), fresh.weight(kind, layer, 1)
            assert (a is None and b is None) or torch.equal(a, b), (kind, layer)


def test_another_dtype_is_refused(model_dir, tmp_path):
    build(model_dir, calibration(), tmp_path / "db")
    bf16 = load_model(str(model_dir), dtype="bfloat16")
    with pytest.raises(UserError, match="different model"):
        Database.load(tmp_path / "db", bf16.model, bf16.adapter, SETTINGS)


def test_other_calibration_tokens_are_refused_and_rebuilt(model_dir, tmp_path):
    old = build(model_dir, calibration(0), tmp_path / "db")
    old_weight = old.weight("mlp", 0, 1)
    dense = load_model(str(model_dir))
    assert Database.load(tmp_path / "db", dense.model, dense.adapter, SETTINGS, calibration(0)).index == old.index
    with pytest.raises(UserError, match="other calibration tokens"):
        Database.load(tmp_path / "db", dense.model, dense.adapter, SETTINGS, calibration(1))
    rebuilt = build(model_dir, calibration(1), tmp_path / "db")
    assert not torch.equal(rebuilt.weight("mlp", 0, 1), old_weight)
