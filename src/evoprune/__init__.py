"""evoprune: structured pruning of causal LMs found by search, exported as real smaller checkpoints.

One call per command (`api.py`): `darwin`, `database`, `search`, `prune`, `slice`, `evaluate`, `nas`,
`train`, `export`, each returning a `Result`; and the pieces they share (`SubnetSpec`, `load_model`,
`export_checkpoint`, ...). The public names are imported on first use, so that a light module (the
llama.cpp child process, `evoprune.errors`) does not pull in torch and transformers.

The layout: components that never import a workflow (`arch`, `weights`, `data`, `evaluation`, `obs`,
`training`, `serving`, and the shared modules at the top) and one package per workflow
(`darwinlm`, `whittle`, `baselines`, `recovery`); `cli.py` and `api.py` sit on top.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "Result": ".api",
    "darwin": ".api",
    "database": ".api",
    "evaluate": ".api",
    "export": ".api",
    "nas": ".api",
    "prune": ".api",
    "search": ".api",
    "slice": ".api",
    "train": ".api",
    "LayerShape": ".arch.shape",
    "LayerSpec": ".arch.spec",
    "LoadedModel": ".models",
    "MemoryWatch": ".memory",
    "ModelAdapter": ".arch.adapter",
    "ModelShape": ".arch.shape",
    "RunConfig": ".config",
    "SubnetSpec": ".arch.spec",
    "UserError": ".errors",
    "adapter_for": ".arch.adapter",
    "export_checkpoint": ".arch.export",
    "load_config": ".config",
    "load_model": ".models",
    "register_adapter": ".arch.adapter",
    "supported_model_types": ".arch.adapter",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'evoprune' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
