"""Content fingerprints for cache keys: a model's weights and config, token blocks, the bytes of files.

A cache keyed by these is recomputed when what it was computed from changes, wherever it lives
(never keyed by a path: a model or corpus replaced at the same path gets a new fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

# config keys that name where the model came from or repeat the tensors' dtype, not what it computes
_CONFIG_KEYS_IGNORED = {"name_or_path", "transformers_version", "dtype", "torch_dtype"}
_CHUNK = 1 << 24

_weights_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_file_memo: dict[tuple, str] = {}


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 (32 hex digits) of the model's config and of every parameter and buffer: name, dtype, shape, bytes.

    Memoized per model object while no tensor is replaced or modified in place (tracked by the
    tensors' identity, storage and autograd version counter; in-place writes through `.data`
    escape that counter, so do not edit a fingerprinted model that way).
    """
    config = _config_json(model)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    state = (config, tuple((name, id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device))
                           for name, t in tensors))
    memo = _weights_memo.get(model)
    if memo is not None and memo[0] == state:
        return memo[2]
    # a model kept in its stored dtype but asked for in another (models.load_model(bounded=True)) gives the
    # numbers of the model loaded in that dtype, so it hashes as that model: caches and databases are shared
    loaded_as = getattr(model, "evoprune_loaded_dtype", None)
    h = hashlib.sha256(config.encode())
    for name, tensor in tensors:
        dtype = loaded_as if loaded_as is not None and tensor.is_floating_point() else tensor.dtype
        h.update(f"\n{name}|{dtype}|{tuple(tensor.shape)}\n".encode())
        flat = tensor.detach().to("cpu").reshape(-1)
        if dtype == tensor.dtype:
            h.update(flat.contiguous().view(torch.uint8).numpy())
            continue
        for start in range(0, flat.numel(), _CHUNK):  # converted a chunk at a time
            h.update(flat[start:start + _CHUNK].to(dtype).contiguous().view(torch.uint8).numpy())
    digest = h.hexdigest()[:32]
    # holding the tensors keeps their ids and storage from being reused by a replacement
    _weights_memo[model] = (state, [t for _, t in tensors], digest)
    return digest


def tokens_fingerprint(blocks: torch.Tensor) -> str:
    """sha256 of token blocks: their shape and int64 ids."""
    blocks = blocks.detach().to("cpu", torch.int64).contiguous()
    return hashlib.sha256(str(tuple(blocks.shape)).encode() + blocks.numpy().tobytes()).hexdigest()


def _config_json(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return type(model).__name__
    fields = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _CONFIG_KEYS_IGNORED}
    return json.dumps({"class": type(model).__name__, "config": fields}, sort_keys=True, default=str)


def files_fingerprint(files: Iterable[Path], root: Path | None = None) -> str:
    """sha256 of the files' bytes, each under its name relative to `root` (its bare name without one).

    A file's digest is memoized in this process by its stat (including the change time, which
    every write updates), so a corpus read several times in one run is hashed once.
    """
    h = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix() if root is not None else path.name
        h.update(f"\n{name}|{_file_digest(path)}".encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)
    if key not in _file_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        _file_memo[key] = h.hexdigest()
    return _file_memo[key]
