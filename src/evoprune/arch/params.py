"""Exact parameter counts and FLOPs per token of a ModelShape, by formula.

The formulas match `sum(p.numel() for p in model.parameters())` of the model that slicing
builds (tied embeddings counted once); tests check this on every supported family.
"""

from __future__ import annotations

from .shape import LayerShape, ModelShape


def attention_params(shape: ModelShape, layer: LayerShape) -> int:
    """q/k/v/o projections (+ biases, q/k norms) and the RMSNorm(s) of the attention block of one layer."""
    if layer.num_kv_heads == 0:
        return 0
    d, hd = shape.hidden_size, shape.head_dim
    q, kv = layer.num_heads * hd, layer.num_kv_heads * hd
    n = d * q + 2 * d * kv + q * d + shape.norms_per_block * d
    if shape.qkv_bias:
        n += q + 2 * kv
    if shape.o_bias:
        n += d
    if shape.qk_norm:
        n += q + kv if shape.qk_norm_whole else 2 * hd
    return n


def mlp_params(shape: ModelShape, layer: LayerShape) -> int:
    """gate/up/down projections (+ biases) and the RMSNorm(s) of the MLP block of one layer."""
    m = layer.intermediate_size
    if m == 0:
        return 0
    d = shape.hidden_size
    n_in = 2 if shape.gated_mlp else 1
    n = (n_in + 1) * d * m + shape.norms_per_block * d
    if shape.mlp_bias:
        n += n_in * m + d
    return n


def layer_params(shape: ModelShape, layer: LayerShape) -> int:
    return attention_params(shape, layer) + mlp_params(shape, layer)


def block_params(shape: ModelShape) -> int:
    """Parameters of all transformer blocks (embeddings, final norm and LM head excluded)."""
    return sum(layer_params(shape, layer) for layer in shape.layers)


def embedding_params(shape: ModelShape) -> int:
    """Token embedding, final norm and LM head (once when tied)."""
    emb = shape.vocab_size * shape.hidden_size
    return emb + shape.hidden_size + (0 if shape.tied_embeddings else emb)


def total_params(shape: ModelShape) -> int:
    return block_params(shape) + embedding_params(shape)


def flops_per_token(shape: ModelShape, context: int = 1024) -> int:
    """Forward FLOPs for one token that attends to `context` positions.

    2 FLOPs per multiply-accumulate of every weight matrix (blocks and LM head), plus the
    attention scores and the weighted sum of values: 4 * heads * head_dim * context per layer.
    Norms, activations and softmax are ignored (they are O(hidden), not O(hidden^2)).
    """
    d, hd = shape.hidden_size, shape.head_dim
    macs = shape.vocab_size * d  # LM head
    attn = 0
    for layer in shape.layers:
        if layer.num_kv_heads:
            q, kv = layer.num_heads * hd, layer.num_kv_heads * hd
            macs += 2 * d * q + 2 * d * kv
            attn += 4 * q * context
        macs += (3 if shape.gated_mlp else 2) * d * layer.intermediate_size
    return 2 * macs + attn
