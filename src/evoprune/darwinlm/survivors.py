"""Trained survivors of a selection stage, kept on disk between stages instead of as models in memory.

The training-aware selection trains a stage's survivors further in the next stage, so their weights
must outlive the stage; with 8 survivors of an 8B candidate that is 56 GB of bf16 weights. Written
as safetensors (only the tensors the candidate does not share with the dense model), only the
candidate being trained or scored is ever in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class SurvivorStore:
    """Files of trained candidates under a private temporary folder; `close()` removes it."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="evoprune-survivors-", dir=root))
        self.count = 0

    def put(self, model: nn.Module, shared: set[int]) -> Path:
        """Write `model`'s tensors except those whose storage is in `shared` (data pointers); returns the file."""
        self.count += 1
        path = self.root / f"candidate-{self.count:06d}.safetensors"
        state, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in shared or tensor.data_ptr() in seen:
                continue  # the dense model's own (frozen) tensor, or a tied copy
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().contiguous().cpu()
        save_file(state, path)
        return path

    def get(self, path: Path, build: Callable[[], nn.Module]) -> nn.Module:
        """The candidate saved at `path`: freshly built, then its saved tensors loaded in place."""
        model = build()
        saved = load_file(path, device=str(next(model.parameters()).device))
        with torch.no_grad():
            params = dict(model.state_dict())
            for name, tensor in saved.items():
                params[name].copy_(tensor)
        return model

    def keep_only(self, paths: set[Path]) -> None:
        """Delete every file but `paths`."""
        for file in self.root.glob("candidate-*.safetensors"):
            if file not in paths:
                file.unlink()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
