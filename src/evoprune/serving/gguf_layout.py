"""How a (possibly heterogeneous) HF model maps onto llama.cpp's `deci` architecture, or why it cannot.

`deci` (DeciLM / Nemotron-NAS in llama.cpp) reads per-layer arrays of query heads, KV heads and MLP
widths, with one head size for the whole model. Per layer: `n_head == 0` means no attention;
`n_head > 0, n_head_kv == 0` is a "linear attention" layer (one matrix in place of attention).
Two traps of llama.cpp's deci graph need a stand-in block written in place of a missing one:

* a layer with attention but `n_ff == 0` skips the layer's residual add (its attention output is
  lost), so such a layer gets a 1-neuron MLP whose weights are all zero;
* the global head size defaults from layer 0, and a layer 0 without attention makes it 0, so that
  layer becomes a linear-attention layer whose matrix is zero.

Both stand-ins add exactly zero to the residual stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ..errors import UserError

log = logging.getLogger(__name__)

FAMILIES = ("llama", "mistral", "qwen2")  # families whose layers deci expresses exactly
ROPE_TYPES = ("default", "llama3", "linear")
NOT_IN_DECI = {"phi3": "the deci writer does not split Phi-3's fused qkv / gate_up projections",
               "olmo2": "deci has no norms after the blocks nor q/k norms over all heads"}  # refused, and why


@dataclass(frozen=True)
class DeciLayer:
    """One layer as written to the GGUF file."""

    source: int  # index of the layer in the HF checkpoint
    n_head: int  # query heads (0: no attention)
    n_head_kv: int  # KV heads (0 with n_head > 0: linear-attention stand-in)
    n_ff: int  # MLP width
    has_attention: bool  # the HF layer has an attention block
    has_mlp: bool  # the HF layer has an MLP block

    @property
    def attention_stand_in(self) -> bool:
        return self.n_head > 0 and not self.has_attention

    @property
    def mlp_stand_in(self) -> bool:
        return self.n_ff > 0 and not self.has_mlp


@dataclass(frozen=True)
class DeciLayout:
    """Everything the GGUF writer needs to know about the model, read from its config."""

    family: str  # llama | mistral | qwen2
    vocab_size: int
    hidden_size: int
    head_dim: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    rope_type: str  # one of ROPE_TYPES
    rope_factor: float  # linear scaling factor (1.0 unless rope_type is "linear")
    tied_embeddings: bool
    layers: tuple[DeciLayer, ...]
    dropped: tuple[int, ...] = field(default=())  # HF layers with neither block (identities), left out

    def is_uniform(self) -> bool:
        """True when every layer has the same real attention and MLP sizes (a plain Llama would do)."""
        first = self.layers[0]
        return all(
            layer.has_attention and layer.has_mlp
            and (layer.n_head, layer.n_head_kv, layer.n_ff) == (first.n_head, first.n_head_kv, first.n_ff)
            for layer in self.layers
        )


def family_of(config: PretrainedConfig) -> str:
    return config.model_type.removeprefix("evoprune_")


def deci_layout(config: PretrainedConfig) -> DeciLayout:
    """Map `config` onto deci, or refuse in one line what deci cannot express.

    Raises:
        UserError: Qwen3 (q/k norms), sliding-window attention in use, an unsupported family,
            activation or RoPE type.
    """
    check_expressible(config)
    rope = _rope_parameters(config)
    n = config.num_hidden_layers
    heads = config.layer_num_attention_heads if getattr(config, "layer_num_attention_heads", None) is not None \
        else [config.num_attention_heads] * n
    kv = config.layer_num_key_value_heads if getattr(config, "layer_num_key_value_heads", None) is not None \
        else [config.num_key_value_heads] * n
    mlp = config.layer_intermediate_sizes if getattr(config, "layer_intermediate_sizes", None) is not None \
        else [config.intermediate_size] * n
    layers, dropped = [], []
    for i in range(n):
        if heads[i] == 0 and mlp[i] == 0:
            dropped.append(i)
            continue
        layers.append(_deci_layer(i, heads[i], kv[i], mlp[i], first=not layers, max_heads=max(heads)))
    if dropped:
        log.info("layers %s have neither attention nor MLP (identities): left out of the GGUF", dropped)
    return DeciLayout(
        family=family_of(config),
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        context_length=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=float(rope["rope_theta"]),
        rope_type=rope.get("rope_type", "default"),
        rope_factor=float(rope.get("factor", 1.0)) if rope.get("rope_type") == "linear" else 1.0,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        layers=tuple(layers),
        dropped=tuple(dropped),
    )


def _deci_layer(source: int, heads: int, kv: int, mlp: int, first: bool, max_heads: int) -> DeciLayer:
    has_attention, has_mlp = heads > 0, mlp > 0
    n_head, n_head_kv, n_ff = heads, kv, mlp
    if not has_attention and first:
        n_head, n_head_kv = max_heads, 0  # linear-attention stand-in: layer 0 sets the head size
    if has_attention and not has_mlp:
        n_ff = 1  # zero MLP stand-in: deci drops the residual add of a layer without MLP
    return DeciLayer(source, n_head, n_head_kv, n_ff, has_attention, has_mlp)


def check_expressible(config: PretrainedConfig) -> None:
    """Refuse, in one line, a model whose computation the deci graph would change."""
    family = family_of(config)
    if family == "qwen3":
        raise UserError("Qwen3 models normalize q and k per head (q_norm/k_norm), which llama.cpp's deci "
                        "architecture cannot express; GGUF export supports llama, mistral and qwen2 models")
    if family in ("phi3", "olmo2"):
        raise UserError(f"llama.cpp's {family} architecture has one attention width (the hidden size) and one MLP "
                        f"width for all layers, and {NOT_IN_DECI[family]}; GGUF export supports "
                        f"{', '.join(FAMILIES)} models (export {family} models as HF checkpoints)")
    if family in ("gemma2", "gemma3_text"):
        raise UserError(f"llama.cpp's {family.removesuffix('_text')} graph takes one head count and MLP width for "
                        "every layer and deci has no Gemma norms or soft-capping; GGUF export supports llama, "
                        "mistral and qwen2 models")
    if family not in FAMILIES:
        raise UserError(f"GGUF export supports {', '.join(FAMILIES)} models, not {config.model_type!r}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UserError(f"GGUF export needs a SiLU-gated MLP; this model uses {config.hidden_act!r}")
    sliding = sliding_window_layers(config)
    if sliding:
        raise UserError(f"layers {sliding} use a sliding attention window of {config.sliding_window} tokens, which "
                        f"llama.cpp's deci architecture cannot express; export models with full attention only")
    rope = _rope_parameters(config)
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise UserError(f"GGUF export supports RoPE types {', '.join(ROPE_TYPES)}, not {rope_type!r}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise UserError("GGUF export needs RoPE over the whole head (partial_rotary_factor 1.0), got "
                        f"{rope['partial_rotary_factor']}")


def sliding_window_layers(config: PretrainedConfig) -> list[int]:
    """Layers whose attention window is shorter than the context (so the window changes results)."""
    window = getattr(config, "sliding_window", None)
    if not window or window >= config.max_position_embeddings:
        return []
    if getattr(config, "use_sliding_window", True) is False:
        return []
    types = getattr(config, "layer_types", None)
    if types is None:
        return list(range(config.num_hidden_layers))
    return [i for i, t in enumerate(types) if t == "sliding_attention"]


def _rope_parameters(config: PretrainedConfig) -> dict:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in rope and "full_attention" in rope:  # one entry per layer type
        rope = dict(rope["full_attention"])
    if "rope_theta" not in rope:
        rope["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return rope


def llama3_rope_factors(config: PretrainedConfig) -> torch.Tensor | None:
    """Per-frequency divisors of Llama-3 RoPE scaling (the `rope_freqs` tensor), or None for other RoPE types.

    llama.cpp divides each RoPE frequency by its factor; transformers computes the scaled frequencies
    directly, so the factor is the ratio of the plain to the scaled frequency (1, `factor`, or the
    smooth blend in between). Shape (head_dim / 2,).
    """
    rope = _rope_parameters(config)
    if rope.get("rope_type") != "llama3":
        return None
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, device="cpu")
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    plain = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  # as transformers
    return (plain.double() / scaled.double()).float()
