"""Find and load a model from a local source, always offline.

A source is one of: the embedded default (`smollm2-135m`), a local HF folder, or a model id
already in the local HF cache. Problems are reported as UserError before weights are read
wherever possible.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from .arch.adapter import ModelAdapter, adapter_for
from .arch.export import register_pruned_classes
from .errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object | None
    adapter: ModelAdapter
    path: Path  # the local folder it came from
    name: str  # what the user called it


def resolve_model_path(source: str) -> Path:
    """Turn a model source into a local folder (no network)."""
    from .assets import EMBEDDED_MODEL, embedded_model_dir

    if source == EMBEDDED_MODEL:
        return embedded_model_dir()
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path {path} is a file; pass the folder that holds config.json")
        return path
    if source.count("/") == 1 and not source.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
        except Exception:
            raise UserError(
                f"model {source!r} is not a local folder and not in the local HF cache "
                f"(evoprune never downloads); pass a folder or '{EMBEDDED_MODEL}'"
            ) from None
    raise UserError(f"model folder not found: {path} (or use '{EMBEDDED_MODEL}')")


def read_config(path: Path, trust_remote_code: bool = False) -> PretrainedConfig:
    """Read and check `config.json` of a model folder before any weight is loaded."""
    register_pruned_classes()
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} is not a HuggingFace model folder: no config.json")
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt config.json in {path}: {e}") from None
    model_type = raw.get("model_type", "")
    if raw.get("auto_map") and not model_type.startswith("evoprune_") and not trust_remote_code:
        raise UserError(f"{path} needs its own remote code ({model_type!r}); pass --trust-remote-code if you trust it")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types for bad configs
        raise UserError(f"cannot read config.json in {path}: {str(e).splitlines()[0]}") from None
    adapter_for(config)
    return config


def check_weight_files(path: Path, allow_pickle: bool) -> None:
    if list(path.glob("*.safetensors")):
        return
    if list(path.glob("*.bin")) or list(path.glob("*.pt")) or list(path.glob("*.pth")):
        if allow_pickle:
            log.warning("loading pickle weights from %s (--allow-pickle)", path)
            return
        raise UserError(
            f"{path} has only pickle weights (*.bin/*.pt), which can run code when loaded; "
            "convert them to safetensors or pass --allow-pickle if you trust the file"
        )
    raise UserError(f"{path} has no weight files (*.safetensors)")


def load_model(source: str, dtype: str = "float32", device: str = "cpu", allow_pickle: bool = False,
               trust_remote_code: bool = False, with_tokenizer: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local source.

    Args:
        source: `smollm2-135m`, a local folder, or a model id in the local HF cache.
        dtype: float32 / bfloat16 / float16.
        device: where to put the model.
        allow_pickle: accept *.bin checkpoints (unsafe: pickle can run code).
        trust_remote_code: accept folders that ship their own modeling code (other than evoprune's).
        with_tokenizer: also load the tokenizer (None with a warning if the folder has none).

    Raises:
        UserError: for every problem with the source.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = resolve_model_path(source)
    config = read_config(path, trust_remote_code)
    check_weight_files(path, allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle or None,
        )
    except Exception as e:
        raise UserError(f"cannot load weights from {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    model.to(device).eval()
    tokenizer = None
    if with_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception:
            log.warning("no usable tokenizer in %s", path)
    return LoadedModel(model, tokenizer, adapter_for(config), path, source)
