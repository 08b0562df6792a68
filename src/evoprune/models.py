"""Find and load a model from its source.

A source is one of: the embedded default (`smollm2-135m`), a local HF folder, or a hub model id, downloaded on
first use into the HF cache (`hub.py`; with HF_HUB_OFFLINE=1 only the cache is looked in). Problems are reported
as UserError before weights are read wherever possible.
"""

from __future__ import annotations

import json
import logging
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .arch.adapter import ModelAdapter, adapter_for
from .arch.export import register_pruned_classes
from .device import choose_device
from .data import check_seq_len
from .errors import UserError
from .hub import is_repo_id, model_snapshot
from .weights.compute_dtype import LOADED_AS, compute_in
from .weights.shard_index import check_sharded_index

if TYPE_CHECKING:
    from .arch.shape import ModelShape
    from .config import RunConfig

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


def resolve_model_path(source: str, revision: str | None = None, allow_pickle: bool = False,
                       trust_remote_code: bool = False) -> Path:
    """Turn a model source into a local folder: the embedded model and local folders as they are, a hub id
    (`owner/name`, at `revision`) from the HF cache, downloaded first unless HF_HUB_OFFLINE is set."""
    from .assets import EMBEDDED_MODEL, embedded_model_dir

    if source == EMBEDDED_MODEL:
        return embedded_model_dir()
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path {path} is a file; pass the folder that holds config.json")
        return path
    if is_repo_id(source):
        return model_snapshot(source, revision, allow_pickle, trust_remote_code)
    raise UserError(f"model folder not found: {path} (or use '{EMBEDDED_MODEL}' or a hub id such as owner/name)")


EVOPRUNE_CODE = ("configuration_evoprune", "modeling_evoprune",  # the files an evoprune export ships (arch/hf/)
                 "configuration_evoprune_phi3", "modeling_evoprune_phi3",
                 "configuration_evoprune_olmo2", "modeling_evoprune_olmo2",
                 "configuration_evoprune_gemma", "modeling_evoprune_gemma")


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
    auto_map = raw.get("auto_map") or {}
    # a type transformers implements loads with its stock classes, whatever code the folder ships (Phi-3's hub folders)
    native = model_type in CONFIG_MAPPING and not model_type.startswith("evoprune_")
    if auto_map and not trust_remote_code and not native:
        if not model_type.startswith("evoprune_"):
            raise UserError(f"{path} needs its own remote code ({model_type!r}); pass --trust-remote-code if you "
                            "trust it")
        foreign = sorted(str(v) for v in auto_map.values() if str(v).split(".")[0] not in EVOPRUNE_CODE)
        if foreign:
            raise UserError(f"{path} says it is an evoprune model ({model_type!r}) but its auto_map points to other "
                            f"code ({', '.join(foreign)}); pass --trust-remote-code if you trust it")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types for bad configs
        raise UserError(f"cannot read config.json in {path}: {str(e).splitlines()[0]}") from None
    try:
        adapter_for(config)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return config


def source_shape(source: str, trust_remote_code: bool = False) -> "ModelShape":
    """The ModelShape of model `source` from its config.json alone: a skeleton on the meta device, no weights read."""
    path = resolve_model_path(source)
    config = read_config(path, trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    shape = adapter_for(config).shape(skeleton)
    # meta tensors share no storage, so tied embeddings are told by the parameter itself and the config
    tied = skeleton.get_input_embeddings().weight is skeleton.get_output_embeddings().weight \
        or bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    return dataclasses.replace(shape, tied_embeddings=tied)


def check_weight_shapes(path: Path, config: PretrainedConfig) -> None:
    """Refuse safetensors weights whose shapes differ from what `config.json` builds (read from the file headers)."""
    from safetensors import safe_open

    if getattr(config, "quantization_config", None):
        return
    try:
        with torch.device("meta"):
            expected = {k: list(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    except Exception:  # a config transformers cannot build: from_pretrained reports it
        return
    mismatches = []
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(file, "pt") as weights:
                shapes = {k: list(weights.get_slice(k).get_shape()) for k in weights.keys()}
        except Exception as e:
            raise UserError(f"cannot load weights from {path}: {file.name} is not a readable safetensors file "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        mismatches += [f"{k} is {shape} in {file.name} but {expected[k]} by config.json"
                       for k, shape in shapes.items() if k in expected and expected[k] != shape]
    if mismatches:
        more = f" (and {len(mismatches) - 1} more tensors)" if len(mismatches) > 1 else ""
        raise UserError(f"the weights in {path} do not match its config.json: {mismatches[0]}{more}; "
                        "put back the config.json saved with these weights")


def check_tokenizer_code(path: Path, trust_remote_code: bool) -> None:
    """Refuse a tokenizer that ships its own code unless the user trusts it (transformers would ask on stdin)."""
    file = path / "tokenizer_config.json"
    if trust_remote_code or not file.is_file():
        return
    try:
        auto_map = json.loads(file.read_text(encoding="utf-8")).get("auto_map")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return  # loading the tokenizer reports it
    if auto_map:
        raise UserError(f"the tokenizer in {path} needs its own code (auto_map in tokenizer_config.json); "
                        "pass --trust-remote-code if you trust it")


def check_device(device: str) -> None:
    """Refuse a device name torch does not know (as the config's validation does) or this process cannot have."""
    choose_device(device)


def check_model_source(source: str, allow_pickle: bool = False, trust_remote_code: bool = False,
                       with_tokenizer: bool = True, revision: str | None = None) -> tuple[Path, PretrainedConfig]:
    """Every check on a model source that needs no weights loaded: its folder (a hub id downloaded), config, weight
    files and tokenizer."""
    path = resolve_model_path(source, revision, allow_pickle, trust_remote_code)
    config = read_config(path, trust_remote_code)
    check_weight_files(path, allow_pickle)
    check_sharded_index(path)
    check_weight_shapes(path, config)
    if with_tokenizer:
        check_tokenizer_code(path, trust_remote_code)
    return path, config


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
               trust_remote_code: bool = False, with_tokenizer: bool = True, mapped: bool = True,
               compute_dtype: str = "auto", require_tokenizer: bool = False,
               revision: str | None = None, bounded: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        source: `smollm2-135m`, a local folder, or a hub model id (downloaded on first use; only the HF cache is
            looked in when HF_HUB_OFFLINE is set).
        dtype: float32 / bfloat16 / float16.
        device: where to put the model (`device.choose_device`: cpu, cuda = the local rank's GPU, cuda:N, mps).
        allow_pickle: accept *.bin checkpoints (unsafe: pickle can run code).
        trust_remote_code: accept folders that ship their own modeling code (other than evoprune's).
        with_tokenizer: also load the tokenizer (None if the folder has none, unless `require_tokenizer`).
        require_tokenizer: refuse a source without a usable tokenizer, before its weights are read.
        mapped: keep safetensors weights memory-mapped (`weights.mapped`) instead of copying them into
            RAM, whenever their stored dtype is `dtype` and the checkpoint needs no conversion.
        compute_dtype: dtype the layers run in, converted one module at a time (`weights.compute_dtype`):
            auto = float32 on CPU (which has no fast bf16/fp16 matrix units in general), else `dtype`.
        revision: branch, tag or commit of a hub id (default: main).
        bounded: for inference only (a model that trains must hold its weights in `dtype`): when the weights
            are stored in a narrower float dtype than `dtype` (bf16 or fp16 for float32), keep them mapped as
            stored and run every module in `dtype`, converted when it runs, instead of copying the whole model
            into `dtype`. Every stored value is exact in `dtype`, so the numbers are those of the copied model.

    Raises:
        UserError: for every problem with the source.
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if compute_dtype != "auto" and compute_dtype not in DTYPES:
        raise UserError(f"unknown compute dtype {compute_dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    device = choose_device(str(device))  # a bare `cuda` is this torchrun process's own GPU
    path, config = check_model_source(source, allow_pickle, trust_remote_code, with_tokenizer, revision)
    tokenizer = None
    if with_tokenizer or require_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as e:  # transformers raises many types for a missing or unreadable tokenizer
            if require_tokenizer:
                raise UserError(f"{path} has no usable tokenizer; evoprune needs one to read calibration text (add "
                                "the tokenizer files of the model it came from)") from None
            log.debug("no usable tokenizer in %s: %s", path, e)
    model = _load_weights(path, config, DTYPES[dtype], trust_remote_code, allow_pickle, mapped, bounded)
    model.to(device).eval()
    computed = resolve_compute_dtype(compute_dtype, DTYPES[dtype], str(device))
    check_compute_dtype(computed, str(device))
    kept_as_stored = next(model.parameters()).dtype != DTYPES[dtype]
    if kept_as_stored:
        setattr(model, LOADED_AS, DTYPES[dtype])
        log.info("weights kept mapped in %s, computed in %s one module at a time (bounded memory)",
                 next(model.parameters()).dtype, computed)
    if computed != next(model.parameters()).dtype:
        compute_in(model, adapter_for(config), computed, embeddings=kept_as_stored)
    return LoadedModel(model, tokenizer, adapter_for(config), path, source)


def resolve_compute_dtype(compute_dtype: str, dtype: torch.dtype, device: str) -> torch.dtype:
    """What `compute_dtype="auto"` means for a model loaded in `dtype` on `device`."""
    if compute_dtype != "auto":
        return DTYPES[compute_dtype]
    return torch.float32 if device == "cpu" else dtype


def check_compute_dtype(dtype: torch.dtype, device: str) -> None:
    """Refuse a compute dtype the device has no kernels for (bf16 on GPUs before Ampere)."""
    if device.startswith("cuda") and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError(f"{device} cannot compute in bfloat16; pass model.compute_dtype=float16 (or float32) "
                        "to run the bf16 weights in another dtype")


def _load_weights(path: Path, config: PretrainedConfig, dtype: torch.dtype, trust_remote_code: bool,
                  allow_pickle: bool, mapped: bool, bounded: bool = False) -> PreTrainedModel:
    has_safetensors = any(path.glob("*.safetensors"))
    if mapped and has_safetensors and not trust_remote_code and not getattr(config, "quantization_config", None):
        from .weights.mapped import MappedWeights, load_mapped_model

        weights = MappedWeights(path)  # headers only: nothing is read until a tensor is used
        stored = weights.stored_dtype()
        if stored == dtype or (bounded and widens_exactly(stored, dtype)):
            model = load_mapped_model(weights, config)
            if model is not None:
                return model
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle or None,
        )
    except Exception as e:
        raise UserError(f"cannot load weights from {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def widens_exactly(stored: torch.dtype, dtype: torch.dtype) -> bool:
    """Whether every value of float dtype `stored` is exact in `dtype` (bf16 and fp16 in float32)."""
    return stored in (torch.bfloat16, torch.float16) and dtype == torch.float32


def load_source(cfg: RunConfig, source: str | None = None, bounded: bool = False) -> LoadedModel:
    """The model `source` (default `cfg.model.source`) loaded as `cfg.model` says, with a tokenizer and a context
    long enough for `cfg.data.seq_len`; `bounded` as in `load_model` (inference only)."""
    m = cfg.model
    source = source or m.source
    loaded = load_model(source, dtype=m.dtype, device=m.device, allow_pickle=m.allow_pickle,
                        trust_remote_code=m.trust_remote_code, compute_dtype=m.compute_dtype, require_tokenizer=True,
                        revision=m.revision if source == m.source else None, bounded=bounded)
    check_seq_len(cfg.data.seq_len, getattr(loaded.model.config, "max_position_embeddings", None))
    return loaded
