"""Configuration of a structurally pruned OLMo-2 model (shipped inside exported checkpoints).

The stock Olmo2Config with the per-layer lists of configuration_evoprune.py. This file imports only
transformers and its sibling configuration_evoprune.py.
"""

from transformers import Olmo2Config

from .configuration_evoprune import _pruned_config

EvopruneOlmo2Config = _pruned_config(Olmo2Config, "Olmo2")
EvopruneOlmo2Config.__module__ = __name__  # the export's auto_map names the file that defines the class
