"""The shape of a (possibly already heterogeneous) model: what a SubnetSpec indexes into."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LayerShape:
    """Sizes of one decoder layer. Zero heads / zero neurons mean the block is absent."""

    num_heads: int  # query heads
    num_kv_heads: int  # KV groups; each owns num_heads // num_kv_heads query heads
    intermediate_size: int  # MLP neurons

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads if self.num_kv_heads else 0


@dataclass(frozen=True)
class ModelShape:
    """Everything the parameter / FLOP formulas and spec validation need about a model.

    Built by an adapter from a real model; stored inside every SubnetSpec so a spec can be
    checked against the model it is applied to.
    """

    family: str  # adapter name, e.g. "llama"
    vocab_size: int
    hidden_size: int
    head_dim: int
    layers: tuple[LayerShape, ...]
    tied_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3): 2 * head_dim weights
    qk_norm_whole: bool = False  # with qk_norm: q and k normalized over all heads (OLMo-2): (heads + kv) * head_dim
    gated_mlp: bool = True  # gate_proj + up_proj + down_proj (False: up + down)
    norms_per_block: int = 1  # RMSNorms that go with each attention / MLP block (Gemma: 2, before and after)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [asdict(layer) for layer in self.layers]
        if d["norms_per_block"] == 1:  # as before the field existed: fingerprints and cache keys stay the same
            del d["norms_per_block"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelShape":
        d = dict(d)
        d["layers"] = tuple(LayerShape(**layer) for layer in d["layers"])
        return cls(**d)

    def describe(self) -> str:
        heads = sorted({layer.num_heads for layer in self.layers})
        kv = sorted({layer.num_kv_heads for layer in self.layers})
        mlp = sorted({layer.intermediate_size for layer in self.layers})
        return (
            f"{self.family}: {self.num_layers} layers, hidden {self.hidden_size}, heads {heads}, "
            f"kv heads {kv}, mlp {mlp}, vocab {self.vocab_size}"
        )
