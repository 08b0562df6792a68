"""Fixtures shared by the pruning tests."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def model_dir(tiny_run_inputs, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_run_inputs / "dense", folder)
    return folder
