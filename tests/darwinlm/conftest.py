"""Fixtures shared by the search tests."""

from __future__ import annotations

import pytest
import torch

from evoprune.darwinlm import pipeline as darwin
from evoprune.evaluation.suite import teacher_for
from evoprune.models import load_model
from evoprune.obs.database import Database
from darwinlm.test_pipeline import config


@pytest.fixture()
def tiny_db(tiny_run_inputs, tmp_path):
    cfg = config(tiny_run_inputs)
    dense = load_model(cfg.model.source)
    db = Database.build(dense.model, dense.adapter, torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(1)),
                        darwin.database_settings(cfg), tmp_path / "db", batch_size=2, progress=False)
    blocks = torch.randint(0, 50, (3, 32), generator=torch.Generator().manual_seed(2))
    teacher = teacher_for(dense.model, str(cfg.model.source), blocks, cfg.eval, 2, False)
    return cfg, dense, db, blocks, teacher
