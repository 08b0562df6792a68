"""Every training loop shares the data walk and the optimizer step of `evoprune.training`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import evoprune
from evoprune.errors import UserError
from evoprune.training import micro_batches

SRC = Path(evoprune.__file__).parent
STEP_CALLS = {"step", "clip_grad_norm_", "AdamW"}  # optimizer.step(), clipping, building the optimizer


def test_only_the_training_package_steps_optimizers():
    """A loop that steps its own optimizer is a copy of `training.apply_step`: none may remain elsewhere."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name == "training" or path.parent == SRC / "training":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STEP_CALLS:
                owner = ast.unparse(node.func.value)
                if "optim" in owner or node.func.attr != "step":
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node.func)}")
    assert found == []


def test_processes_share_each_micro_batch_without_overlap():
    blocks = torch.arange(10).repeat_interleave(3).view(10, 3)
    whole, cursor = micro_batches(blocks, 8, 4, count=2)
    assert [b[:, 0].tolist() for b in whole] == [[8, 9, 0, 1], [2, 3, 4, 5]] and cursor == 6
    shares = [micro_batches(blocks, 8, 4, count=2, rank=r, world_size=2) for r in range(2)]
    assert all(c == cursor for _, c in shares)
    for step in range(2):
        assert torch.equal(torch.cat([s[0][step] for s in shares]), whole[step])
    with pytest.raises(UserError, match="cannot be split evenly over 3 processes"):
        micro_batches(blocks, 0, 4, rank=0, world_size=3)
