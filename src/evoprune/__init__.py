"""evoprune: structured pruning of causal LMs found by search, exported as real smaller checkpoints."""

from .arch.adapter import ModelAdapter, adapter_for, register_adapter, supported_model_types
from .arch.export import export_checkpoint
from .arch.shape import LayerShape, ModelShape
from .arch.spec import LayerSpec, SubnetSpec
from .config import RunConfig, load_config
from .errors import UserError
from .memory import MemoryWatch
from .models import LoadedModel, load_model

__version__ = "0.1.0"

__all__ = [
    "LayerShape",
    "LayerSpec",
    "LoadedModel",
    "MemoryWatch",
    "ModelAdapter",
    "ModelShape",
    "RunConfig",
    "SubnetSpec",
    "UserError",
    "adapter_for",
    "export_checkpoint",
    "load_config",
    "load_model",
    "register_adapter",
    "supported_model_types",
]
