"""The Nemotron-NAS (DeciLM) checkpoint format: what it can hold, for the exporter and the search spaces.

vLLM (`nemotron_nas`), SGLang, TensorRT-LLM and mlx-lm (`nemotron-nas`) serve a heterogeneous Llama
from one field of config.json, `block_configs`, with one entry per layer::

    {"attention": {"no_op": bool, "replace_with_linear": bool, "n_heads_in_group": int | null},
     "ffn": {"no_op": bool, "replace_with_linear": bool, "ffn_mult": float}}

A present attention block has all `num_attention_heads` query heads of head_dim = hidden_size /
num_attention_heads; only its KV head count varies (num_attention_heads / n_heads_in_group). A
present MLP has find_multiple(int(2 * ffn_mult * hidden_size / 3), 256) neurons. Weight names are
Llama's; a block that is a no-op has no weights, its norm included. Nothing else of a layer can be
set: no per-head q/k norms (Qwen3), no sliding windows, no head size of its own. Biases fit: one
`attention_bias` flag covers q, k, v and o (a missing one is written as zeros), `mlp_bias` gate, up
and down.

Hence the search space `nemotron-nas`: attention all heads or none, MLP widths at multiples of 256
(a width in between is zero-padded up to one on export, which is exact: the extra neurons have zero
gate, up and down weights), hidden size never pruned.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from ..errors import UserError

MLP_MULTIPLE = 256  # every engine rounds a layer's intermediate size up to a multiple of this
SPACE = "nemotron-nas"  # the search space whose every result exports to this format
SPACES = ("full", SPACE)  # search.space: full = every shape evoprune can prune to
FAMILIES = ("llama", "mistral", "qwen2")  # model types (also pruned: evoprune_<type>) with Llama-style layers
ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # RoPE variants both mlx-lm and vLLM build for this format
NO_ATTENTION = "mlp"  # evoprune's layer type of a layer without attention (configuration_evoprune.py)


def find_multiple(n: int, k: int) -> int:
    """The smallest multiple of `k` that is at least `n`."""
    return n if n % k == 0 else n + k - n % k


def intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """A layer's MLP width as the engines compute it from its `ffn_mult`."""
    return find_multiple(int(2 * ffn_mult * hidden_size / 3), MLP_MULTIPLE)


def padded_width(width: int) -> int:
    """The width an MLP of `width` neurons has in the format (zero neurons appended)."""
    return find_multiple(width, MLP_MULTIPLE)


def ffn_mult(width: int, hidden_size: int) -> float:
    """An `ffn_mult` (6 decimals, as mlx-lm rounds it) that every engine decodes to `padded_width(width)`.

    The plain 1.5 * width / hidden when it decodes exactly, else the multiplier of a width halfway
    into the 256-block, which float rounding cannot push out of it.
    """
    target = padded_width(width)
    for w in (target, target - MLP_MULTIPLE // 2):
        mult = round(1.5 * w / hidden_size, 6)
        if intermediate_size(mult, hidden_size) == target:
            return mult
    raise AssertionError(f"no ffn_mult decodes to {target} neurons at hidden size {hidden_size}")


def search_widths(full: int, multiple: int = 1) -> list[int]:
    """MLP widths of the nemotron-nas space: multiples of lcm(`multiple`, 256) below `full`, then `full`."""
    step = math.lcm(max(1, multiple), MLP_MULTIPLE)
    return [w for w in range(step, full, step)] + [full]


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer_shapes(config: PretrainedConfig) -> list[tuple[int, int, int]]:
    """(query heads, KV heads, MLP neurons) of every layer of a stock or evoprune-pruned config."""
    n = config.num_hidden_layers
    heads = getattr(config, "layer_num_attention_heads", None) or [config.num_attention_heads] * n
    kv = getattr(config, "layer_num_key_value_heads", None) or [config.num_key_value_heads or heads[0]] * n
    mlp = getattr(config, "layer_intermediate_sizes", None) or [config.intermediate_size] * n
    return list(zip(heads, kv, mlp))


def family(config: PretrainedConfig) -> str:
    return config.model_type.removeprefix("evoprune_")


def problem(config: PretrainedConfig) -> str | None:
    """The first reason the model of `config` cannot be written in the format, or None when it can.

    The query heads a present attention block must keep are hidden_size / head_dim: the engines
    derive head_dim from exactly that count, and for a source whose heads span the hidden size
    (every Llama, Mistral and Qwen2 checkpoint) it is the source's own head count. So the config
    alone decides, whatever the pruning history (a hidden size that was pruned shows here too).
    """
    kind = family(config)
    if kind == "qwen3":
        return "Qwen3's per-head q/k norms have no place in the Nemotron-NAS format"
    if kind == "phi3":
        return ("Phi-3's fused qkv_proj / gate_up_proj and its longrope / partial RoPE are not written to the "
                "Nemotron-NAS format")
    if kind == "olmo2":
        return ("OLMo-2's norms after each block and its q/k norms over all heads have no place in the "
                "Nemotron-NAS format")
    if kind in ("gemma2", "gemma3_text"):
        return "Gemma's norms around each block and scaled embedding (and Gemma-2's soft-capping) have no place in it"
    if kind not in FAMILIES:
        return f"model type {config.model_type!r} is not a Llama-style model ({', '.join(FAMILIES)})"
    if config.hidden_act != "silu":
        return f"the MLP activation is {config.hidden_act!r}; Nemotron-NAS engines run silu"
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        return f"RoPE type {rope.get('rope_type')!r} is not one of {', '.join(ROPE_TYPES)}"
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        return "partial RoPE (partial_rotary_factor < 1) has no place in the Nemotron-NAS format"
    shapes = layer_shapes(config)
    window = _first_sliding_layer(config, len(shapes))
    if window is not None:
        return (f"layer {window} attends through a sliding window of {config.sliding_window} tokens; "
                "Nemotron-NAS engines attend to every earlier token")
    d, hidden = head_dim(config), config.hidden_size
    if hidden % d:
        return f"head_dim {d} does not divide the hidden size {hidden}; the engines take head_dim = hidden / heads"
    full = hidden // d
    for i, (h, _, _) in enumerate(shapes):
        if h and h < full:
            return (f"layer {i} keeps {h} of {full} query heads; Nemotron-NAS engines keep all query heads of an "
                    "attention block (a search with --space nemotron-nas keeps or removes whole blocks)")
        if h > full:
            return (f"layer {i} has {h} query heads of {d} channels, more than the hidden size {hidden} holds: the "
                    "hidden size was pruned, which the Nemotron-NAS format cannot express")
    if not any(h for h, _, _ in shapes):
        return "no layer keeps an attention block"
    return None


def check_space_fits(space: str, config: PretrainedConfig) -> None:
    """Refuse a search in the nemotron-nas space of a model whose results could not be exported to the format."""
    reason = problem(config) if space == SPACE else None
    if reason:
        raise UserError(f"search.space={SPACE} cannot hold this model: {reason}")


def _first_sliding_layer(config: PretrainedConfig, n: int) -> int | None:
    types = getattr(config, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"] * n
    return next((i for i, t in enumerate(types) if t not in ("full_attention", NO_ATTENTION)), None)
