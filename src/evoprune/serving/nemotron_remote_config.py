"""Configuration of a Nemotron-NAS (DeciLM) checkpoint, shipped inside it as `configuration_decilm.py`.

transformers has no class for model type `nemotron-nas`, so engines that read config.json through
`AutoConfig(..., trust_remote_code=True)` (vLLM, SGLang) take this one from the folder's `auto_map`.
It is a Llama config plus `block_configs`, whose entries read both as JSON objects and as
attributes (`config.block_configs[i].attention.n_heads_in_group`), as the engines' model code reads
them. This file imports only transformers, never evoprune.
"""

from transformers import LlamaConfig


class BlockField(dict):
    """A JSON object whose keys also read as attributes (a missing one raises AttributeError)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _block(entry):
    return BlockField({k: BlockField(v) if isinstance(v, dict) else v for k, v in dict(entry).items()})


class DeciLMConfig(LlamaConfig):
    """A Llama config with one `block_configs` entry per layer: {"attention": {...}, "ffn": {...}}."""

    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        self.block_configs = [_block(entry) for entry in block_configs or []]
        super().__init__(**kwargs)
