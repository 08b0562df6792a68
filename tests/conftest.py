"""Shared fixtures: a seeded RNG per test and tiny random models of every supported family."""

from __future__ import annotations

import os

# The suite never touches the network: huggingface_hub (and so transformers and datasets) reads this once, at
# import, and it reaches every subprocess. The download tests point HF_ENDPOINT at a local stand-in and unset it.
os.environ["HF_HUB_OFFLINE"] = "1"

import random  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from evoprune.arch.shape import ModelShape
from evoprune.arch.spec import LayerSpec, SubnetSpec

# Test modules import the helpers below as `from evoprune_tests import ...`: the bare module name
# `conftest` is ambiguous once other test folders bring their own conftest.py.
sys.modules.setdefault("evoprune_tests", sys.modules[__name__])

SEED = 0


def tiny_gqa_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """The tiny GQA Llama of the evaluation and training tests (vocab 99, hidden 32, 2 layers, 4 heads
    over 2 KV groups, 37 neurons), seeded, in eval mode."""
    settings = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=37)
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()

TINY_SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, intermediate_size=37, head_dim=8,
                  num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)


@dataclass(frozen=True)
class TinyCase:
    """One tiny model variant: family, config class, model class and config overrides."""

    id: str
    config_class: type
    model_class: type
    kwargs: dict = field(default_factory=dict)

    def config(self):
        return self.config_class(**{**TINY_SIZES, **self.kwargs})

    def build(self, seed: int = SEED):
        torch.manual_seed(seed)
        model = self.model_class(self.config()).eval()
        # Random init leaves biases at 0 and norms at 1: perturb them so slicing mistakes show.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
        return model


# GQA = 4 query heads over 2 KV groups; MHA = 4 over 4. Eight variants in all.
TINY_CASES = [
    TinyCase("llama-gqa", LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=2)),
    TinyCase("llama-mha-bias-tied", LlamaConfig, LlamaForCausalLM,
             dict(num_key_value_heads=4, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    TinyCase("llama-gqa-bias", LlamaConfig, LlamaForCausalLM,
             dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True)),
    TinyCase("mistral-gqa-sw4", MistralConfig, MistralForCausalLM, dict(num_key_value_heads=2, sliding_window=4)),
    TinyCase("qwen2-gqa-tied", Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    # hybrid: layer 0 full attention, layers 1-2 sliding window 4
    TinyCase("qwen2-mha-hybrid-sw4", Qwen2Config, Qwen2ForCausalLM,
             dict(num_key_value_heads=4, use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    TinyCase("qwen3-gqa", Qwen3Config, Qwen3ForCausalLM, dict(num_key_value_heads=2)),
    TinyCase("qwen3-mha-tied", Qwen3Config, Qwen3ForCausalLM, dict(num_key_value_heads=4, tie_word_embeddings=True)),
]
CASES_BY_ID = {c.id: c for c in TINY_CASES}

# Phi-3 (fused qkv / gate_up projections) and OLMo-2 (post-norms, q/k norms over all heads), tested in
# tests/arch/test_phi3.py and test_olmo2.py. The longrope variant uses RoPE on half of each head.
PHI3_LONGROPE = dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5, short_factor=[1.0, 1.5],
                     long_factor=[2.0, 3.0])
PHI3_CASES = [
    TinyCase("phi3-gqa", Phi3Config, Phi3ForCausalLM, dict(num_key_value_heads=2)),
    TinyCase("phi3-mha-sw4-tied", Phi3Config, Phi3ForCausalLM,
             dict(num_key_value_heads=4, sliding_window=4, tie_word_embeddings=True)),
    TinyCase("phi3-gqa-partial-longrope", Phi3Config, Phi3ForCausalLM,
             dict(num_key_value_heads=2, original_max_position_embeddings=32, rope_parameters=PHI3_LONGROPE)),
]
OLMO2_CASES = [
    TinyCase("olmo2-gqa", Olmo2Config, Olmo2ForCausalLM, dict(num_key_value_heads=2)),
    TinyCase("olmo2-mha-bias-tied", Olmo2Config, Olmo2ForCausalLM,
             dict(num_key_value_heads=4, attention_bias=True, tie_word_embeddings=True)),
]
CASES_BY_ID.update({c.id: c for c in PHI3_CASES + OLMO2_CASES})


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same torch / random state."""
    random.seed(SEED)
    torch.manual_seed(SEED)
    yield


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


@pytest.fixture(params=TINY_CASES, ids=[c.id for c in TINY_CASES])
def tiny_case(request) -> TinyCase:
    return request.param


@pytest.fixture
def tiny_model(tiny_case):
    """A freshly built, seeded tiny model of one family variant (fp32, eval mode)."""
    return tiny_case.build()


@pytest.fixture
def tiny_llama():
    """The GQA Llama variant alone, for tests that need one model only."""
    return CASES_BY_ID["llama-gqa"].build()


def _subset(rng: random.Random, n: int, min_size: int = 0) -> list[int]:
    k = rng.randint(min_size, n)
    return sorted(rng.sample(range(n), k))


def random_spec(shape: ModelShape, rng: random.Random, keep_hidden: bool | None = None,
                p_no_attention: float = 0.25, p_no_mlp: float = 0.25) -> SubnetSpec:
    """A valid random SubnetSpec of `shape`.

    Per layer: a random subset of KV groups (none = attention removed, with probability
    `p_no_attention`), the same random non-empty set of query-head slots in every kept group, and
    a random subset of neurons (none with probability `p_no_mlp`). Hidden channels: all kept when
    `keep_hidden` is True, a random non-empty subset when False, either at random when None. At
    least one layer keeps an attention block.
    """
    layers = []
    for layer in shape.layers:
        if layer.num_kv_heads and rng.random() >= p_no_attention:
            kv = _subset(rng, layer.num_kv_heads, 1)
            slots = _subset(rng, layer.heads_per_group, 1)
        else:
            kv, slots = [], []
        if layer.intermediate_size and rng.random() >= p_no_mlp:
            neurons = _subset(rng, layer.intermediate_size, 1)
        else:
            neurons = []
        layers.append(LayerSpec.from_groups(layer, kv, slots, neurons))
    if not any(ls.has_attention for ls in layers):
        i = rng.choice([i for i, layer in enumerate(shape.layers) if layer.num_kv_heads])
        layer = shape.layers[i]
        layers[i] = LayerSpec.from_groups(layer, _subset(rng, layer.num_kv_heads, 1),
                                          _subset(rng, layer.heads_per_group, 1), layers[i].neurons)
    if keep_hidden is None:
        keep_hidden = rng.random() < 0.5
    hidden = None if keep_hidden else _subset(rng, shape.hidden_size, 1)
    return SubnetSpec(shape, layers, hidden, {"method": "random", "test": True}).validate()


CORPUS_WORDS = [f"w{i}" for i in range(80)]


@pytest.fixture(scope="session")
def tiny_run_inputs(tmp_path_factory):
    """A tiny GQA Llama with a word-level tokenizer, and a text corpus, on disk."""
    root = tmp_path_factory.mktemp("cli")
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(CORPUS_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>",
                                        model_max_length=256)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, head_dim=8, max_position_embeddings=256,
                         eos_token_id=1, bos_token_id=1, pad_token_id=1)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "dense")
    tokenizer.save_pretrained(root / "dense")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(40, 80))) for _ in range(400)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return root


def tiny_dense_and_db(run_inputs, folder, num_levels: int):
    """The tiny run's dense model and a database of `num_levels` levels built in `folder`."""
    from evoprune.darwinlm import pipeline as darwin
    from evoprune.config import load_config
    from evoprune.models import load_model
    from evoprune.obs.database import Database

    cfg = load_config(None, [f"model.source={run_inputs / 'dense'}", f"database.num_levels={num_levels}"])
    dense = load_model(cfg.model.source)
    db = Database.build(dense.model, dense.adapter, torch.randint(0, 50, (4, 32)), darwin.database_settings(cfg),
                        folder, batch_size=2, progress=False)
    return dense, db


def stitched_first_mlp(model) -> tuple:
    """(adapter, spec, parameter name, replace, copy of the stitched tensor, copy of the dense state) for `model` with
    a random spec keeping every block and a random stitched down_proj in layer 0: what a re-fit or a distillation
    of the sliced model must leave unchanged."""
    from evoprune.arch.adapter import adapter_for

    adapter = adapter_for(model.config)
    spec = random_spec(adapter.shape(model), random.Random(5), keep_hidden=True, p_no_attention=0, p_no_mlp=0)
    name = adapter.parameter_name(0, "mlp_output")
    replace = {name: torch.randn(model.config.hidden_size, len(spec.layers[0].neurons))}
    return adapter, spec, name, replace, replace[name].clone(), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """`use(name)` points EVOPRUNE_CACHE at a user cache of its own (teacher caches and quality figures measured
    afresh, not read from another run's), sharing the unpacked assets."""
    from evoprune.assets import cache_dir

    shared = cache_dir()

    def use(name: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        if (shared / "assets").exists():
            (folder / "assets").symlink_to(shared / "assets")
        monkeypatch.setenv("EVOPRUNE_CACHE", str(folder))

    return use
