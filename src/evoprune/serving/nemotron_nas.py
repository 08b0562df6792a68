"""Export a (pruned) Llama-family checkpoint as a Nemotron-NAS (DeciLM) checkpoint.

vLLM, SGLang, TensorRT-LLM and mlx-lm serve a Nemotron-NAS folder's per-layer shapes natively;
`nemotron_format.py` says what the format holds. Input: an evoprune checkpoint (stock or
heterogeneous `evoprune_*` config) or a stock Llama / Mistral / Qwen2 folder. Output: the same
weights under the same names, each MLP zero-padded to a multiple of 256 neurons, missing biases
written as zeros where the format has one flag for several projections, `config.json` with
`block_configs`, `configuration_decilm.py` for engines that read the config through
trust_remote_code, and the tokenizer and generation files. Tensors are read and written one at a
time (peak memory: the largest tensor), into a folder renamed into place when complete.

A model the format cannot hold is refused with one line naming the first reason (see
`nemotron_format.problem`), before anything is written.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from transformers import PretrainedConfig

from ..arch.streamed_export import DEFAULT_SHARD_BYTES
from ..atomic import staged_dir, staged_file, write_json
from ..errors import UserError
from ..safetensors_stream import SafetensorsStreamWriter
from ..models import read_config, resolve_model_path
from ..weights.mapped import STORED_DTYPES, read_header
from ..weights.random_checkpoint import plan_shards, shard_file_name
from ..weights.shard_index import INDEX_FILE, check_sharded_index, read_weight_map
from ..arch import nemotron_format as fmt

REMOTE_CONFIG = "configuration_decilm.py"
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
                "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                "generation_config.json", "evoprune_spec.json")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; no engine reads them
SHARD_BYTES = DEFAULT_SHARD_BYTES  # largest weight file written (a larger tensor gets a file of its own)


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the exported checkpoint and how to make it from the source."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


class SourceTensors:
    """Tensor names, dtypes and shapes of a folder's safetensors (headers only); tensors read one by one."""

    def __init__(self, folder: Path):
        check_sharded_index(folder)
        index = folder / INDEX_FILE
        files = sorted(set(read_weight_map(index).values())) if index.is_file() else \
            [f.name for f in sorted(folder.glob("*.safetensors"))]
        if not files:
            raise UserError(f"{folder} has no weight files (*.safetensors); export needs safetensors weights")
        self.entries: dict[str, tuple[Path, torch.dtype, tuple[int, ...]]] = {}
        for file in files:
            for name, entry in read_header(folder / file)[1].items():
                if name == "__metadata__" or name.endswith(IGNORED_SUFFIXES):
                    continue
                if entry["dtype"] not in STORED_DTYPES:
                    raise UserError(f"{file}: tensor {name} has dtype {entry['dtype']}, which export cannot read")
                self.entries[name] = (folder / file, STORED_DTYPES[entry["dtype"]], tuple(entry["shape"]))
        self.used: set[str] = set()
        self._open: dict[Path, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][2]

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name][1]

    def read(self, name: str) -> torch.Tensor:
        file = self.entries[name][0]
        if file not in self._open:
            self._open[file] = safe_open(file, "pt")
        return self._open[file].get_tensor(name)


def export_nemotron_nas(model_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the model in `model_dir` to `out` as a Nemotron-NAS checkpoint.

    Args:
        model_dir: an evoprune export (`model/` of a run, a nas pick) or a stock Llama-family folder.
        out: the folder to create; refused if it exists and is not empty unless `force`.
        force: replace an existing `out` (only once the new folder is complete).

    Returns:
        The folder written.

    Raises:
        UserError: one line naming the first layer or property the format cannot hold (a partial set
            of query heads, a pruned hidden size, q/k norms, sliding windows ...), or unreadable input.
    """
    folder = resolve_model_path(str(model_dir))
    config = read_config(folder)
    _refuse_pruned_hidden(folder)
    reason = fmt.problem(config)
    if reason:
        raise UserError(f"cannot export {folder} as Nemotron-NAS: {reason}")
    source = SourceTensors(folder)
    plan = _plan(config, source, folder)
    left = sorted(set(source.entries) - source.used)
    if left:
        raise UserError(f"cannot export {folder} as Nemotron-NAS: tensor {left[0]} has no place in the format"
                        + (f" (and {len(left) - 1} more)" if len(left) > 1 else ""))
    with staged_dir(out, force=force) as tmp:
        _write_weights(plan, tmp)
        write_json(tmp / "config.json", nemotron_config(config, source))
        shutil.copyfile(Path(__file__).with_name("nemotron_remote_config.py"), tmp / REMOTE_CONFIG)
        for name in COPIED_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
    return Path(out)


def nemotron_config(config: PretrainedConfig, source: SourceTensors) -> dict:
    """config.json of the export: the source's global settings plus one `block_configs` entry per layer."""
    hidden = config.hidden_size
    blocks, padded = [], {}
    for i, (heads, kv, width) in enumerate(fmt.layer_shapes(config)):
        blocks.append({"attention": {"no_op": not heads, "replace_with_linear": False,
                                     "n_heads_in_group": heads // kv if heads else None},
                       "ffn": {"no_op": not width, "replace_with_linear": False,
                               "ffn_mult": fmt.ffn_mult(width, hidden) if width else None}})
        if width and fmt.padded_width(width) != width:
            padded[str(i)] = [width, fmt.padded_width(width)]
    rope = dict(getattr(config, "rope_parameters", None) or {})
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    text = config.get_text_config()
    return {
        "architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas",
        "auto_map": {"AutoConfig": f"{REMOTE_CONFIG.removesuffix('.py')}.DeciLMConfig"},
        "vocab_size": config.vocab_size, "hidden_size": hidden, "num_hidden_layers": len(blocks),
        "num_attention_heads": hidden // fmt.head_dim(config), "hidden_act": config.hidden_act,
        "rms_norm_eps": config.rms_norm_eps, "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": scaling if scaling.get("rope_type", "default") != "default" else None,
        "attention_bias": _has_bias(source, ("q_proj", "k_proj", "v_proj", "o_proj")),
        "mlp_bias": _has_bias(source, ("gate_proj", "up_proj", "down_proj")),
        "tie_word_embeddings": bool(getattr(text, "tie_word_embeddings", False)),
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "torch_dtype": str(source.dtype("model.embed_tokens.weight")).removeprefix("torch."),
        "block_configs": blocks,
        "evoprune_export": {"source_model_type": config.model_type, "zero_padded_mlp": padded},
    }


def _refuse_pruned_hidden(folder: Path) -> None:
    """A spec saved beside the weights tells a pruned hidden size apart from other head-count mismatches."""
    spec_file = folder / "evoprune_spec.json"
    if not spec_file.is_file():
        return
    try:
        spec = json.loads(spec_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # provenance only: the config and weights decide
    hidden = spec.get("hidden") if isinstance(spec, dict) else None
    if hidden is not None:
        source = spec.get("source", {}).get("hidden_size", "?")
        raise UserError(f"cannot export {folder} as Nemotron-NAS: its hidden size was pruned ({source} -> "
                        f"{len(hidden)} channels); the format keeps the hidden size of every head")


def _has_bias(source: SourceTensors, projections: tuple[str, ...]) -> bool:
    return any(name.endswith(tuple(f"{p}.bias" for p in projections)) for name in source.entries)


def _plan(config: PretrainedConfig, source: SourceTensors, folder: Path) -> list[OutTensor]:
    """Every tensor of the export in order, its expected source shape checked against the config."""
    hidden, d = config.hidden_size, fmt.head_dim(config)
    attention_bias = _has_bias(source, ("q_proj", "k_proj", "v_proj", "o_proj"))
    mlp_bias = _has_bias(source, ("gate_proj", "up_proj", "down_proj"))
    plan: list[OutTensor] = []

    def take(name: str, shape: tuple[int, ...], pad_rows: int = 0, pad_cols: int = 0) -> None:
        if name not in source:
            raise UserError(f"cannot export {folder} as Nemotron-NAS: tensor {name} is missing from its weights")
        if source.shape(name) != shape:
            raise UserError(f"the weights in {folder} do not match its config.json: {name} is "
                            f"{list(source.shape(name))}, the config makes it {list(shape)}")
        source.used.add(name)
        out_shape = (shape[0] + pad_rows, *shape[1:-1], shape[-1] + pad_cols) if len(shape) > 1 else \
            (shape[0] + pad_rows,)
        plan.append(OutTensor(name, source.dtype(name), out_shape,
                              lambda: _zero_pad(source.read(name), pad_rows, pad_cols)))

    def bias(name: str, size: int, like: str, pad: int = 0) -> None:
        if name in source:
            take(name, (size,), pad_rows=pad)
        else:  # the format's one flag covers it: a zero bias is no bias
            plan.append(OutTensor(name, source.dtype(like), (size + pad,), lambda: torch.zeros(size + pad)))

    take("model.embed_tokens.weight", (config.vocab_size, hidden))
    for i, (heads, kv, width) in enumerate(fmt.layer_shapes(config)):
        p = f"model.layers.{i}."
        if heads:
            take(p + "input_layernorm.weight", (hidden,))
            for proj, rows, cols in (("q", heads * d, hidden), ("k", kv * d, hidden), ("v", kv * d, hidden),
                                     ("o", hidden, heads * d)):
                take(f"{p}self_attn.{proj}_proj.weight", (rows, cols))
                if attention_bias:
                    bias(f"{p}self_attn.{proj}_proj.bias", rows, f"{p}self_attn.{proj}_proj.weight")
        if width:
            pad = fmt.padded_width(width) - width
            take(p + "post_attention_layernorm.weight", (hidden,))
            for proj in ("gate", "up"):
                take(f"{p}mlp.{proj}_proj.weight", (width, hidden), pad_rows=pad)
                if mlp_bias:
                    bias(f"{p}mlp.{proj}_proj.bias", width, f"{p}mlp.{proj}_proj.weight", pad)
            take(f"{p}mlp.down_proj.weight", (hidden, width), pad_cols=pad)
            if mlp_bias:
                bias(f"{p}mlp.down_proj.bias", hidden, f"{p}mlp.down_proj.weight")
    take("model.norm.weight", (hidden,))
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        source.used.add("lm_head.weight")  # tied: the engines reuse the embeddings
    else:
        take("lm_head.weight", (config.vocab_size, hidden))
    return plan


def _zero_pad(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """`t` with `rows` zero rows below and `cols` zero columns to the right (neurons that add nothing)."""
    if rows:
        t = torch.cat([t, t.new_zeros((rows, *t.shape[1:]))])
    if cols:
        t = torch.cat([t, t.new_zeros((*t.shape[:-1], cols))], dim=-1)
    return t


def _write_weights(plan: list[OutTensor], folder: Path) -> None:
    """Shards of at most SHARD_BYTES, each filled one tensor at a time, plus the index when several."""
    itemsize = max(t.dtype.itemsize for t in plan)
    by_name = {t.name: t for t in plan}
    shards = plan_shards([(t.name, t.shape) for t in plan], itemsize, SHARD_BYTES)
    weight_map = {}
    for k, shard in enumerate(shards):
        file = shard_file_name(k + 1, len(shards))
        layout = {name: (by_name[name].dtype, shape) for name, shape in shard}
        with staged_file(folder / file) as tmp:
            writer = SafetensorsStreamWriter(tmp, layout, {"format": "pt"})
            try:
                for name, _ in shard:
                    writer.write_rows(name, 0, by_name[name].make().to(by_name[name].dtype))
            except BaseException:
                writer.discard()
                raise
            writer.close()
        weight_map.update({name: file for name, _ in shard})
    if len(shards) > 1:
        total = sum(math.prod(t.shape) * t.dtype.itemsize for t in plan)
        write_json(folder / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
