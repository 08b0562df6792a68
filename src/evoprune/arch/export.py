"""Write a model as a HuggingFace checkpoint folder that stock transformers loads.

Uniform results are plain checkpoints of their family. Heterogeneous ones carry
`configuration_evoprune.py` + `modeling_evoprune.py` and an `auto_map`, so
`AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` loads them in a process
that never imported evoprune.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel

from ..atomic import staged_dir, write_json
from .hf import modeling_evoprune
from .spec import SubnetSpec


def is_pruned_class(model: PreTrainedModel) -> bool:
    return type(model).__module__.rpartition(".")[2].startswith("modeling_evoprune")


def export_checkpoint(model: PreTrainedModel, out: str | Path, tokenizer=None, spec: SubnetSpec | None = None,
                      force: bool = False) -> Path:
    """Save `model` (+ tokenizer, generation config, spec) to `out` atomically.

    Args:
        model: a dense or sliced model.
        out: target folder; refused if it exists and is not empty unless `force`.
        tokenizer: saved beside the weights when given.
        spec: saved as `evoprune_spec.json` beside the weights, for provenance.
        force: replace an existing folder (only once the new one is complete).

    Returns:
        The folder path.
    """
    out = Path(out)
    with staged_dir(out, force=force) as tmp:
        if is_pruned_class(model):
            type(model.config).register_for_auto_class()
            type(model).register_for_auto_class("AutoModelForCausalLM")
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if spec is not None:
            write_json(tmp / "evoprune_spec.json", spec.to_dict())
        _check_complete(tmp, needs_code=is_pruned_class(model))
    return out


def _check_complete(folder: Path, needs_code: bool) -> None:
    config = json.loads((folder / "config.json").read_text())
    if not list(folder.glob("*.safetensors")):
        raise RuntimeError(f"export wrote no safetensors into {folder}")
    if needs_code:
        missing = [f for f in ("modeling_evoprune.py", "configuration_evoprune.py") if not (folder / f).exists()]
        if missing or "auto_map" not in config:
            raise RuntimeError(f"export of a pruned model lacks its remote code: {missing or 'auto_map'}")
        for code in folder.glob("*.py"):
            source = code.read_text()
            if "import evoprune" in source or "from evoprune" in source:
                raise RuntimeError(f"exported code must not import evoprune: {code.name}")


def register_pruned_classes() -> None:
    """Make evoprune's own copies of the pruned classes known to the Auto classes (no remote code)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .adapter import registered_adapters

    families = [f for adapter in registered_adapters() for f in getattr(adapter, "families", {}).values()]
    for family in families:
        model_type = family.pruned_config.model_type
        try:
            AutoConfig.register(model_type, family.pruned_config)
            AutoModelForCausalLM.register(family.pruned_config, family.pruned_lm)
        except ValueError:
            pass  # already registered
    assert modeling_evoprune  # the module that defines them is imported above
