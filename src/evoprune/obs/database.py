"""The second-order pruning database: per module, a ladder of compressed versions on disk.

For every layer's attention and MLP, each level stores which heads / neurons are kept and the
output projection (o_proj / down_proj) restricted to the kept input columns, updated by grouped
OBS to compensate for what was removed (ZipLM / DarwinLM). q/k/v and gate/up rows of removed
units are simply dropped, so they are not stored. The full level is the dense module itself
and the removed level stores nothing, so the database is a fraction of the model's size.

Layout of a database folder: one `layer_NNN.safetensors` per layer (written atomically as soon
as the layer is solved, so an interrupted build resumes at the first missing layer), each with
its level table in the file metadata, and `index.json` written last.
"""

from __future__ import annotations

import contextlib

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.shape import ModelShape
from ..arch.spec import LayerSpec, SubnetSpec
from ..atomic import staged_file, write_json
from ..safetensors_stream import write_tensors
from ..errors import UserError
from ..fingerprint import tokens_fingerprint, weights_fingerprint
from ..weights.compute_dtype import loaded_dtype_of, weights_in
from ..weights.layerwise import run_layer_by_layer
from .levels import (ATTENTION_UNITS, attention_cost, attention_ladder, check_levels, check_space, mlp_cost,
                     mlp_ladder)
from .module_levels import solve_attention_levels, solve_mlp_levels
from .solver import HessianAccumulator

log = logging.getLogger(__name__)

FORMAT = "evoprune.database/2"  # 2: keyed by all weights and the calibration tokens
KINDS = ("attention", "mlp")
STORAGE_DTYPES = {"model": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# settings added later: at these values, older databases stay valid
ADDED_SETTINGS = {"attention_units": "groups", "storage_dtype": "model", "space": "full"}


@dataclass
class DatabaseSettings:
    """What a database depends on besides the model; a mismatch on load is refused."""

    num_levels: int = 11  # levels per module, from removed to full
    spacing: str = "params"  # levels evenly spaced in params or flops
    multiple: int = 1  # MLP widths at multiples of this
    method: str = "obs"  # obs (second-order, weights updated) | activation (magnitude ranking, no update)
    percdamp: float = 0.01  # Hessian dampening, fraction of mean(diag H)
    calibration: str = ""  # description of the calibration tokens (source, split, blocks x seq_len)
    neuron_step: int = 0  # neurons removed per OBS step (0 = automatic by width)
    attention_units: str = "groups"  # groups: KV groups and query heads | query_heads: K/V always kept
    storage_dtype: str = "model"  # level weights stored in the model's dtype, or bfloat16 / float16 / float32
    space: str = "full"  # full | nemotron-nas: attention whole or removed, MLP widths at multiples of 256

    def check(self) -> None:
        check_levels(self.num_levels, self.spacing)
        check_space(self.space)
        if self.attention_units not in ATTENTION_UNITS:
            raise UserError(f"database attention_units must be groups or query_heads, got {self.attention_units!r}")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise UserError(f"database storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, "
                            f"got {self.storage_dtype!r}")
        if self.method not in ("obs", "activation"):
            raise UserError(f"database method must be obs or activation, got {self.method!r}")


@dataclass
class Level:
    """One compressed version of one module."""

    params: int
    flops: int
    error: float  # second-order reconstruction error (0 for the full level)
    heads: list[int] = field(default_factory=list)  # attention: kept query heads
    kv_heads: list[int] = field(default_factory=list)  # attention: kept KV groups
    neurons: list[int] | None = None  # MLP: kept neurons (loaded lazily from the shard)
    width: int = 0  # MLP: number of kept neurons


def model_fingerprint(model: PreTrainedModel, adapter: ModelAdapter) -> str:
    """Hash of the model's shape and of all its weights, config and dtype: tells databases of different models apart."""
    shape = json.dumps(adapter.shape(model).to_dict(), sort_keys=True)
    return hashlib.sha256((shape + weights_fingerprint(model)).encode()).hexdigest()[:32]


class Database:
    """A loaded database: level tables in memory, weights memory-mapped from the shards."""

    def __init__(self, path: Path, index: dict, tables: list[dict]):
        self.path = path
        self.index = index
        self.shape = ModelShape.from_dict(index["shape"])
        self.settings = DatabaseSettings(**index["settings"])
        self.levels: dict[str, list[list[Level]]] = {
            kind: [[Level(**lv) for lv in table[kind]] for table in tables] for kind in KINDS
        }
        self._files = {}

    # ---- building ---------------------------------------------------------------------
    @classmethod
    def build(cls, model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, settings: DatabaseSettings,
              path: str | Path, batch_size: int = 4, progress: bool = True) -> "Database":
        """Solve every module layer by layer and write the database to `path` (resuming a partial build).

        Solved layers found in `path` are reused only if they were solved from the same weights,
        calibration `blocks` and settings.
        """
        settings.check()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        shape = adapter.shape(model)
        fingerprint = model_fingerprint(model, adapter)
        calibration = tokens_fingerprint(blocks)
        stamp = database_stamp(fingerprint, calibration, settings)
        dtype = STORAGE_DTYPES[settings.storage_dtype] or loaded_dtype_of(model)
        done = {i for i in range(shape.num_layers) if _shard_stamp(path / _shard_name(i)) == stamp}
        if done:
            log.info("database: reusing %d solved layers in %s", len(done), path)
        hessians: dict[str, HessianAccumulator] = {}

        def attach(i, layer):
            if i in done:
                return []
            handles = []
            for kind, module in (("attention", adapter.attention(layer) and adapter.attention_output(layer)),
                                 ("mlp", adapter.mlp(layer) and adapter.mlp_output(layer))):
                if module:
                    acc = hessians[kind] = HessianAccumulator(module.in_features)
                    handles.append(module.register_forward_pre_hook(lambda m, args, acc=acc: acc.add_batch(args[0])))
            return handles

        def finish(i, layer):
            if i in done:
                return
            tensors, table = {}, {}
            for kind in KINDS:
                acc = hessians.pop(kind, None)
                solved = _solved_projection(kind, layer, adapter)  # of a bounded model: as the copied model's
                with weights_in(solved, loaded_dtype_of(model)) if solved is not None else contextlib.nullcontext():
                    levels = _solve(kind, i, layer, adapter, shape, settings, acc)
                del acc  # the Hessian is not needed while the levels are written
                table[kind] = []
                for k, (level, weight) in enumerate(levels):
                    if weight is not None:
                        tensors[f"{kind}.{k}.weight"] = weight.to(dtype).contiguous()
                    if level.neurons is not None:
                        tensors[f"{kind}.{k}.neurons"] = torch.tensor(level.neurons, dtype=torch.int32)
                    table[kind].append({**asdict(level), "neurons": None})
            with staged_file(path / _shard_name(i)) as tmp:
                write_tensors(tmp, tensors, {"levels": json.dumps(table), "stamp": stamp})

        run_layer_by_layer(model, adapter, blocks, batch_size, attach, finish, progress, desc="database")
        write_json(path / "index.json", {"format": FORMAT, "shape": shape.to_dict(), "fingerprint": fingerprint,
                                         "calibration": calibration, "settings": asdict(settings),
                                         "layers": shape.num_layers})
        return cls.load(path, model, adapter, settings, blocks)

    # ---- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, model: PreTrainedModel | None = None, adapter: ModelAdapter | None = None,
             settings: DatabaseSettings | None = None, blocks: torch.Tensor | None = None) -> "Database":
        """Open a database, refusing one built from another model (weights, config, dtype), with other
        settings or, when `blocks` are given, from other calibration tokens."""
        path = Path(path)
        index_file = path / "index.json"
        if not index_file.is_file():
            raise UserError(f"no database at {path} (index.json missing; build it with `evoprune database`)")
        try:
            index = json.loads(index_file.read_text())
            assert index.get("format") == FORMAT
            index["settings"] = {**ADDED_SETTINGS, **index["settings"]}
        except (json.JSONDecodeError, AssertionError, UnicodeDecodeError):
            raise UserError(f"{index_file} is not an evoprune database index of format {FORMAT}; rebuild it") from None
        if model is not None and adapter is not None and index["fingerprint"] != model_fingerprint(model, adapter):
            raise UserError(f"database {path} was built from a different model (other weights, config or dtype; "
                            f"it was {ModelShape.from_dict(index['shape']).describe()}); rebuild it for this model")
        if blocks is not None and index["calibration"] != tokens_fingerprint(blocks):
            raise UserError(f"database {path} was built from other calibration tokens than these "
                            f"({blocks.shape[0]}x{blocks.shape[1]}); rebuild it for this data")
        if settings is not None and asdict(settings) != index["settings"]:
            diff = [f"{k}: database {index['settings'].get(k)!r} vs requested {v!r}"
                    for k, v in asdict(settings).items() if index["settings"].get(k) != v]
            raise UserError(f"database {path} was built with other settings ({'; '.join(diff)}); "
                            "rebuild it or use the same settings")
        tables = []
        stamp = database_stamp(index["fingerprint"], index["calibration"], DatabaseSettings(**index["settings"]))
        for i in range(index["layers"]):
            shard = path / _shard_name(i)
            if _shard_stamp(shard) != stamp:
                raise UserError(f"database shard {shard} is missing or corrupt; rebuild the database")
            with safe_open(shard, "pt") as f:
                tables.append(json.loads(f.metadata()["levels"]))
        return cls(path, index, tables)

    # ---- queries --------------------------------------------------------------------------
    def num_levels(self, kind: str, layer: int) -> int:
        return len(self.levels[kind][layer])

    def cost(self, kind: str, layer: int, level: int, metric: str = "params") -> int:
        return getattr(self.levels[kind][layer][level], metric)

    def costs(self, metric: str) -> dict[str, list[list[int]]]:
        """kind -> layer -> level -> the level's exact parameters or FLOPs per token (`metric`)."""
        return {kind: [[getattr(lv, metric) for lv in levels] for levels in self.levels[kind]] for kind in KINDS}

    def weight(self, kind: str, layer: int, level: int) -> torch.Tensor | None:
        """Compensated output projection of a level (None for the full level: use the model's own).

        A private copy: tensors of a memory-mapped shard share pages with the file handle, and a
        candidate trained in place must never change what the next candidate reads.
        """
        f = self._file(layer)
        key = f"{kind}.{level}.weight"
        return f.get_tensor(key).clone() if key in f.keys() else None

    def neurons(self, layer: int, level: int) -> list[int]:
        lv = self.levels["mlp"][layer][level]
        if lv.neurons is None:
            f = self._file(layer)
            key = f"mlp.{level}.neurons"
            lv.neurons = f.get_tensor(key).tolist() if key in f.keys() else []
        return lv.neurons

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("*.safetensors"))

    def _file(self, layer: int):
        if layer not in self._files:
            self._files[layer] = safe_open(self.path / _shard_name(layer), "pt")
        return self._files[layer]

    # ---- stitching --------------------------------------------------------------------------
    def stitch(self, attention_levels: list[int], mlp_levels: list[int], adapter: ModelAdapter,
               meta: dict | None = None) -> tuple[SubnetSpec, dict[str, torch.Tensor]]:
        """A genotype (one level per module) as a SubnetSpec plus the compensated weights to slice in."""
        layers, replace = [], {}
        for i, (a, m) in enumerate(zip(attention_levels, mlp_levels)):
            attn = self.levels["attention"][i][a]
            neurons = self.neurons(i, m) if m < self.num_levels("mlp", i) - 1 else list(
                range(self.shape.layers[i].intermediate_size))
            layers.append(LayerSpec(list(attn.heads), list(attn.kv_heads), neurons if m > 0 else []))
            for kind, level, part in (("attention", a, "attention_output"), ("mlp", m, "mlp_output")):
                w = self.weight(kind, i, level) if level > 0 else None
                if w is not None:
                    replace[adapter.parameter_name(i, part)] = w
        return SubnetSpec(self.shape, layers, None, dict(meta or {})), replace


def planned_costs(shape: ModelShape, settings: DatabaseSettings, metric: str) -> dict[str, list[list[int]]]:
    """`Database.costs(metric)` of the database `settings` will build for a model of `shape`, from the shape alone."""
    costs: dict[str, list[list[int]]] = {"attention": [], "mlp": []}
    for layer in shape.layers:
        ladder = attention_ladder(shape, layer, settings.num_levels, settings.spacing, settings.attention_units,
                                  settings.space)
        costs["attention"].append([attention_cost(shape, layer, shapes[0], metric) if shapes else 0
                                   for shapes in ladder])
        widths = mlp_ladder(layer, settings.num_levels, settings.multiple, settings.space) \
            if layer.intermediate_size else [0]
        costs["mlp"].append([mlp_cost(shape, n, metric) for n in widths])
    return costs


def _solved_projection(kind: str, layer, adapter: ModelAdapter):
    """The projection whose weights `_solve` compensates (attention's output, the MLP's down), or None."""
    if kind == "attention":
        return adapter.attention_output(layer) if adapter.attention(layer) is not None else None
    return adapter.mlp_output(layer) if adapter.mlp(layer) is not None else None


def _solve(kind: str, i: int, layer, adapter: ModelAdapter, shape: ModelShape, settings: DatabaseSettings,
           acc: HessianAccumulator | None) -> list[tuple[Level, torch.Tensor | None]]:
    """The ladder of one module as (Level, compensated weight or None) pairs."""
    layer_shape = shape.layers[i]
    if kind == "attention":
        if adapter.attention(layer) is None:
            return [(Level(0, 0, 0.0), None)]
        ladder = attention_ladder(shape, layer_shape, settings.num_levels, settings.spacing,
                                  settings.attention_units, settings.space)
        solved = solve_attention_levels(adapter.attention_output(layer).weight, acc.take_hessian(settings.percdamp),
                                        layer_shape, shape.head_dim, ladder, settings.method)
        return [(Level(attention_cost(shape, layer_shape, s.shape, "params") if s.shape else 0,
                       attention_cost(shape, layer_shape, s.shape, "flops") if s.shape else 0,
                       s.error, s.kept, s.kv_heads), s.weight) for s in solved]
    if adapter.mlp(layer) is None:
        return [(Level(0, 0, 0.0, neurons=[]), None)]
    widths = mlp_ladder(layer_shape, settings.num_levels, settings.multiple, settings.space)
    solved = solve_mlp_levels(adapter.mlp_output(layer).weight, acc.take_hessian(settings.percdamp), widths,
                              settings.method, settings.neuron_step)
    return [(Level(mlp_cost(shape, n, "params"), mlp_cost(shape, n, "flops"), s.error,
                   neurons=s.kept if 0 < n < widths[-1] else None, width=n), s.weight)
            for n, s in zip(widths, solved)]


def _shard_name(i: int) -> str:
    return f"layer_{i:03d}.safetensors"


def stamped_settings(settings: dict) -> dict:
    """The settings that identify a database: those added later are left out at their default value, so
    files keyed by a database stay valid when a setting is added."""
    return {k: v for k, v in settings.items() if ADDED_SETTINGS.get(k, object()) != v}


def database_stamp(fingerprint: str, calibration: str, settings: DatabaseSettings) -> str:
    stamped = stamped_settings(asdict(settings))
    key = fingerprint + calibration + json.dumps(stamped, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _shard_stamp(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with safe_open(path, "pt") as f:
            return (f.metadata() or {}).get("stamp")
    except Exception:
        return None
