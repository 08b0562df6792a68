"""Configuration of a structurally pruned Gemma-2 / Gemma-3 text model (shipped inside exported checkpoints).

The stock config of the family plus the per-layer lists of `configuration_evoprune.PerLayerShapes`
(a layer type "mlp" marks a layer without attention). This file imports only transformers and its
sibling `configuration_evoprune.py`, which is shipped beside it.
"""

from huggingface_hub.dataclasses import strict
from transformers import Gemma2Config, Gemma3TextConfig

from .configuration_evoprune import PerLayerShapes


def _pruned_config(stock, name, model_type):
    namespace = {"model_type": f"evoprune_{model_type}", "__module__": __name__,
                 "__annotations__": dict(PerLayerShapes.__annotations__)}
    return strict(type(name, (PerLayerShapes, stock), namespace))


EvopruneGemma2Config = _pruned_config(Gemma2Config, "EvopruneGemma2Config", "gemma2")
EvopruneGemma3TextConfig = _pruned_config(Gemma3TextConfig, "EvopruneGemma3TextConfig", "gemma3_text")
