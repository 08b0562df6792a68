"""Configuration of a structurally pruned Phi-3 / Phi-3.5 model (shipped inside exported checkpoints).

The stock Phi3Config with the per-layer lists of configuration_evoprune.py. Phi-3 checks the length
of longrope's factors against `hidden_size // num_attention_heads`, which stops being the head size
once heads are pruned, so the pruned config uses transformers' generic check, which reads `head_dim`.
This file imports only transformers and its sibling configuration_evoprune.py.
"""

from transformers import Phi3Config

from .configuration_evoprune import _pruned_config


class Phi3ConfigWithHeadDim(Phi3Config):
    """Phi3Config whose RoPE check is transformers' generic one, which reads `head_dim`."""

    def validate_rope(self):
        super(Phi3Config, self).validate_rope()


EvoprunePhi3Config = _pruned_config(Phi3ConfigWithHeadDim, "Phi3")
EvoprunePhi3Config.__module__ = __name__  # the export's auto_map names the file that defines the class
