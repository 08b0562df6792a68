"""Random-init checkpoints with real configs, written shard by shard without ever holding the whole model.

The benchmarks on 8B-class shapes need checkpoints that stock transformers loads like the real
ones: the same config, the same tensor names and shapes, bf16, sharded with an index. Their values
only need to be random and reproducible. `write_random_checkpoint` lists the tensors of the model
built on the meta device (no memory), plans the shards from the shapes, then generates and writes
one shard at a time, so its peak memory is about one shard plus one 64 MB fp32 chunk.

    from evoprune.weights.random_checkpoint import LLAMA_3_1_8B, cached_random_checkpoint, with_layers
    folder = cached_random_checkpoint("llama-3.1-8b-4l", with_layers(LLAMA_3_1_8B, 4))
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PretrainedConfig

from ..atomic import staged_dir
from ..errors import UserError
from .shard_index import INDEX_FILE, SINGLE_FILE, check_sharded_index

log = logging.getLogger(__name__)

# Bump when the values a (config, dtype, seed) produces change, so cached checkpoints are rewritten.
FORMAT_VERSION = 1
# Rows of a tensor are drawn in fp32 chunks of at most this size, then cast (an 8B embedding is 1 GB in bf16).
CHUNK_BYTES = 64 * 2**20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model")
CACHE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Real configs as data (transformers 5 spelling: rope_theta lives in rope_parameters). Do not mutate them:
# `with_layers` and `build_config` copy.
LLAMA_3_2_1B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
    "max_position_embeddings": 131072, "initializer_range": 0.02, "rms_norm_eps": 1e-5,
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
    "bos_token_id": 128000, "eos_token_id": 128001,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
}
LLAMA_3_1_8B = {
    **LLAMA_3_2_1B,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "head_dim": 128,
    "tie_word_embeddings": False,
    "rope_parameters": {**LLAMA_3_2_1B["rope_parameters"], "factor": 8.0},
}


def with_layers(config_dict: dict, num_hidden_layers: int) -> dict:
    """A copy of `config_dict` with `num_hidden_layers` decoder layers (e.g. "8B-wide with 4 layers")."""
    if not isinstance(num_hidden_layers, int) or num_hidden_layers < 1:
        raise UserError(f"num_hidden_layers must be a positive integer, got {num_hidden_layers!r}")
    settings = copy.deepcopy(config_dict)
    settings["num_hidden_layers"] = num_hidden_layers
    if isinstance(settings.get("layer_types"), list):  # per-layer attention kinds (Qwen, Mistral ...)
        if num_hidden_layers > len(settings["layer_types"]):
            raise UserError(f"config lists {len(settings['layer_types'])} layer_types; "
                            f"cannot extend them to {num_hidden_layers} layers")
        settings["layer_types"] = settings["layer_types"][:num_hidden_layers]
    return settings


def build_config(config_dict: dict) -> PretrainedConfig:
    """The transformers config of a config dict (as in config.json, with `model_type`)."""
    settings = copy.deepcopy(config_dict)
    model_type = settings.pop("model_type", None)
    if not model_type:
        raise UserError("config dict has no model_type; add e.g. \"model_type\": \"llama\"")
    try:
        return AutoConfig.for_model(model_type, **settings)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot build a {model_type!r} config: {str(e).splitlines()[0]}") from None


def parameter_shapes(config: PretrainedConfig) -> tuple[str, list[tuple[str, tuple[int, ...]]]]:
    """The model class name and every stored tensor's (name, shape), in state_dict order, tied copies left out.

    The model is built on the meta device, so this costs no memory even for 8B shapes.
    """
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tie = bool(getattr(config, "tie_word_embeddings", False))
    tied = getattr(model, "_tied_weights_keys", None) or {}
    seen: set[int] = set()
    shapes = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen or (tie and name in tied):
            continue  # lm_head.weight when the embeddings are tied: transformers re-ties it on load
        seen.add(id(tensor))
        shapes.append((name, tuple(tensor.shape)))
    return type(model).__name__, shapes


def plan_shards(shapes: list[tuple[str, tuple[int, ...]]], itemsize: int,
                max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split tensors, in order, into shards of at most `max_shard_bytes` (a larger tensor gets a shard alone)."""
    shards, current, size = [], [], 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    if current:
        shards.append(current)
    return shards


def shard_file_name(index: int, count: int) -> str:
    """transformers' name for shard `index` (1-based) of `count`; a single shard is `model.safetensors`."""
    return SINGLE_FILE if count == 1 else f"model-{index:05d}-of-{count:05d}.safetensors"


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed that is the same in every run (unlike Python's salted `hash`)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def random_tensor(name: str, shape: tuple[int, ...], std: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """One tensor as a fresh model would hold it: norms ones, biases zeros, the rest N(0, std²).

    Drawn row chunk by row chunk in fp32 (at most CHUNK_BYTES each), cast into the `dtype` result.
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1 and "norm" in name:
        return torch.ones(shape, dtype=dtype)
    out = torch.empty(shape, dtype=dtype)
    if out.numel() == 0:
        return out
    rows = out.view(shape[0] if shape else 1, -1)  # (R, C)
    step = max(1, CHUNK_BYTES // (rows.shape[1] * 4))
    generator = torch.Generator().manual_seed(tensor_seed(seed, name))
    for start in range(0, rows.shape[0], step):
        chunk = torch.randn(min(step, rows.shape[0] - start), rows.shape[1], generator=generator)
        rows[start:start + step].copy_(chunk.mul_(std))
    return out


def write_random_checkpoint(config: PretrainedConfig, out: Path, dtype: torch.dtype = torch.bfloat16,
                            max_shard_bytes: int = 2 * 2**30, seed: int = 0, tokenizer_from: Path | None = None,
                            force: bool = False) -> Path:
    """Write a random-init checkpoint of `config` that stock `from_pretrained` loads, one shard at a time.

    Peak memory is about one shard plus one fp32 chunk: each shard is generated, saved and released
    before the next. The folder appears only when complete (built under a temporary sibling name).

    Args:
        config: the model config; not modified (the written copy records `dtype` and the architecture).
        out: the folder to create.
        dtype: the floating dtype the tensors are stored in.
        max_shard_bytes: the largest shard; more than one shard gives `model-0000i-of-0000N.safetensors`
            plus `model.safetensors.index.json`, one gives `model.safetensors`.
        seed: with the tensor's name, seeds each tensor; the same seed writes the same values.
        tokenizer_from: a folder whose tokenizer files are copied in (the tokenizer must fit the vocabulary).
        force: replace an existing `out` (only once the new one is complete).

    Returns:
        `out`.

    Raises:
        UserError: for a bad dtype, shard size or tokenizer folder, or an existing `out` without `force`.
    """
    out = Path(out)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserError(f"dtype must be a floating torch dtype such as torch.bfloat16, got {dtype!r}")
    if not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise UserError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}")
    if tokenizer_from is not None and not Path(tokenizer_from).is_dir():
        raise UserError(f"tokenizer folder not found: {tokenizer_from}")
    config = copy.deepcopy(config)
    architecture, shapes = parameter_shapes(config)
    shards = plan_shards(shapes, dtype.itemsize, max_shard_bytes)
    std = float(getattr(config, "initializer_range", 0.02))
    with staged_dir(out, force=force) as tmp:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            file = shard_file_name(i, len(shards))
            log.info("writing %s (%d tensors) of a random %s", file, len(shard), architecture)
            _write_shard(tmp / file, shard, std, seed, dtype)
            weight_map.update({name: file for name, _ in shard})
        if len(shards) > 1:
            numel = sum(math.prod(shape) for _, shape in shapes)
            index = {"metadata": {"total_parameters": numel, "total_size": numel * dtype.itemsize},
                     "weight_map": dict(sorted(weight_map.items()))}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        config.architectures = [architecture]
        config.dtype = dtype
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
        if tokenizer_from is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_from) / name).is_file():
                    shutil.copyfile(Path(tokenizer_from) / name, tmp / name)
    return out


def _write_shard(file: Path, shard: list[tuple[str, tuple[int, ...]]], std: float, seed: int,
                 dtype: torch.dtype) -> None:
    """Generate one shard's tensors and save them; they are released when this returns."""
    from safetensors.torch import save_file

    tensors = {name: random_tensor(name, shape, std, seed, dtype) for name, shape in shard}
    save_file(tensors, file, metadata={"format": "pt"})


def cached_random_checkpoint(name: str, config_dict: dict, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                             max_shard_bytes: int = 2 * 2**30, tokenizer_from: Path | None = None) -> Path:
    """The random checkpoint of `config_dict` under the user cache, written on first use.

    It lives in `<cache>/random-checkpoints/<name>-<hash>/`, the hash covering the config, dtype,
    seed, shard size, tokenizer files and FORMAT_VERSION, so any change gets its own folder.

    Raises:
        UserError: for a name that is not a plain folder name, or anything `write_random_checkpoint` refuses.
    """
    from ..assets import cache_dir

    if not CACHE_NAME.fullmatch(name):
        raise UserError(f"random checkpoint name {name!r} must be a plain folder name (letters, digits, . _ -)")
    key = checkpoint_key(config_dict, dtype, seed, max_shard_bytes, tokenizer_from)
    out = cache_dir() / "random-checkpoints" / f"{name}-{key}"
    if is_complete(out):
        return out
    if out.exists():
        log.warning("rewriting incomplete random checkpoint %s", out)
    log.info("writing random checkpoint %s (once; later runs reuse it)", out)
    return write_random_checkpoint(build_config(config_dict), out, dtype, max_shard_bytes, seed, tokenizer_from,
                                   force=True)


def checkpoint_key(config_dict: dict, dtype: torch.dtype, seed: int, max_shard_bytes: int,
                   tokenizer_from: Path | None) -> str:
    """A short hash of everything that decides a cached random checkpoint's files."""
    tokenizer = hashlib.sha256()
    if tokenizer_from is not None:
        for file in TOKENIZER_FILES:
            if (Path(tokenizer_from) / file).is_file():
                tokenizer.update(file.encode() + b"\0" + (Path(tokenizer_from) / file).read_bytes())
    settings = {"config": config_dict, "dtype": str(dtype), "seed": seed, "max_shard_bytes": max_shard_bytes,
                "tokenizer": tokenizer.hexdigest() if tokenizer_from is not None else None,
                "version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds a config and all the weights its index names."""
    if not (folder / "config.json").is_file():
        return False
    if (folder / SINGLE_FILE).is_file():
        return True
    if not (folder / INDEX_FILE).is_file():
        return False
    try:
        check_sharded_index(folder)
    except UserError:
        return False
    return True
