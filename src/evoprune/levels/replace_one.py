"""Replace-one scores (Puzzle): the KL to the dense model of the dense model with one module at one level.

Every (module, level) of a database is scored once, all other modules full. The model stays the
dense one: a level is applied in place by writing its compensated output projection into the
kept input columns and zeros into the removed ones, which computes exactly what the sliced
module computes. The hidden states entering every layer are computed once, so a variant of
layer i runs only layers i..N-1 and the head.

Measuring every level of every module costs about one forward pass per level (20 minutes for
SmolLM2-135M on 2 CPU cores at 1,024 tokens). By default only two levels per module are
measured, the removed one and the one nearest half its cost, and the others are read off the
database's second-order errors: a level's KL is taken as proportional to its reconstruction error
(the second-order view, KL ≈ ½δᵀFδ), piecewise between the measured points, so the measured KL
sets each module's scale and the OBS error the shape of its ladder.

The scores are written to a JSON file after every layer and a rerun resumes at the first layer
without scores; the file is keyed by the database, the blocks and the teacher it was made from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..atomic import write_json
from ..evaluation.teacher import TeacherCache, kl_to_teacher
from ..fingerprint import tokens_fingerprint
from ..modes import eval_mode
from ..obs.database import Database, stamped_settings
from ..arch.hf.modeling_evoprune import layer_type
from ..weights.layerwise import LayerMasks, capture_first_layer_inputs
from ..obs.module_levels import head_columns
from ..obs.store import building
from .budget import KINDS

FORMAT = "evoprune.replace_one/1"
log = logging.getLogger(__name__)


@dataclass
class ReplaceOneScores:
    scores: dict[str, list[list[float]]]  # kind -> layer -> level -> KL (the full level scores 0)
    seconds: float  # what scoring them took, whichever run did it
    reused: bool = False  # read whole from a file that an earlier run (or target) wrote

    def to_dict(self) -> dict:
        return {"scores": self.scores, "seconds": round(self.seconds, 2)}


class _Tail(nn.Module):
    """Layers `first`..N-1 and the head of `model`, fed the cached hidden states entering layer `first`.

    Called like a causal LM on blocks it has cached inputs for (so `kl_to_teacher` can score it).
    """

    def __init__(self, model: PreTrainedModel, adapter: ModelAdapter, first: int, rows: dict[bytes, int],
                 hidden: torch.Tensor, kwargs: list[dict]):
        super().__init__()
        self.model, self.adapter, self.first = model, adapter, first
        self.rows, self.hidden, self.kwargs = rows, hidden, kwargs

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        index = torch.tensor([self.rows[row.numpy().tobytes()] for row in input_ids.cpu()])
        h = self.hidden[index].to(input_ids.device)
        for layer, kwargs in zip(self.adapter.layers(self.model)[self.first:], self.kwargs[self.first:]):
            out = layer(h, **_batch_kwargs(kwargs, len(index)))
            h = out[0] if isinstance(out, tuple) else out
        logits = self.adapter.output_head(self.model)(self.adapter.final_norm(self.model)(h))
        return _Logits(logits)


@dataclass
class _Logits:
    logits: torch.Tensor


def _batch_kwargs(kwargs: dict, n: int) -> dict:
    """The layer keyword arguments captured for a batch, cut to `n` rows where they have a batch dimension."""
    def cut(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] > 1:
            return v[:n]
        if isinstance(v, tuple):
            return tuple(cut(x) for x in v)
        return v
    return {k: cut(v) for k, v in kwargs.items()}


@contextmanager
def module_at_level(model: PreTrainedModel, adapter: ModelAdapter, db: Database, kind: str, layer: int,
                    level: int) -> Iterator[None]:
    """Within the block, module (`kind`, `layer`) of the dense `model` computes what database level `level`
    computes: kept input columns of its output projection hold the level's weights, removed ones zeros."""
    block = adapter.layers(model)[layer]
    proj = adapter.attention_output(block) if kind == "attention" else adapter.mlp_output(block)
    saved_weight = proj.weight.detach().clone()
    saved_bias = proj.bias.detach().clone() if proj.bias is not None else None
    try:
        with torch.no_grad():
            kept = _kept_columns(db, kind, layer, level)
            new = torch.zeros_like(saved_weight)
            weight = db.weight(kind, layer, level) if level > 0 else None
            if kept:
                cols = torch.tensor(kept)
                new[:, cols] = weight.to(new) if weight is not None else saved_weight[:, cols]
            proj.weight.copy_(new)
            if saved_bias is not None and level == 0:
                proj.bias.zero_()
        yield
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved_weight)
            if saved_bias is not None:
                proj.bias.copy_(saved_bias)


def _kept_columns(db: Database, kind: str, layer: int, level: int) -> list[int]:
    if level == 0:
        return []
    if kind == "mlp":
        return db.neurons(layer, level)
    return head_columns(db.levels["attention"][layer][level].heads, db.shape.head_dim)


def measured_levels(db: Database, kind: str, layer: int, all_levels: bool) -> list[int]:
    """The levels whose KL is measured: all but the full one, or the removed one and the one nearest half cost."""
    n = db.num_levels(kind, layer)
    if all_levels or n <= 3:
        return list(range(n - 1))
    costs = [lv.params for lv in db.levels[kind][layer]]
    half = min(range(1, n - 1), key=lambda lv: (abs(costs[lv] - costs[-1] / 2), lv))
    return [0, half]


def interpolated(errors: list[float], measured: dict[int, float]) -> list[float]:
    """Every level's score from the measured ones: linear in the level's error between the measured points
    (the full level scores 0 at error 0); a level beyond the largest measured error scales with that point."""
    points = sorted({(0.0, 0.0), *((max(errors[lv], 0.0), kl) for lv, kl in measured.items())})
    out = []
    for lv, e in enumerate(errors):
        if lv in measured:
            out.append(measured[lv])
            continue
        e = max(e, 0.0)
        upper = next(((x, y) for x, y in points if x >= e), None)
        lower = max(((x, y) for x, y in points if x <= e), default=(0.0, 0.0))
        if upper is None:  # beyond the measured errors: proportional to the largest point
            x, y = points[-1]
            out.append(y * e / x if x > 0 else y)
        elif upper[0] == lower[0]:
            out.append(upper[1])
        else:
            out.append(lower[1] + (upper[1] - lower[1]) * (e - lower[0]) / (upper[0] - lower[0]))
    return out


def score_key(db: Database, blocks: torch.Tensor, teacher: TeacherCache, all_levels: bool) -> dict:
    """What the scores depend on: a file made from anything else is not reused."""
    return {"format": FORMAT, "all_levels": all_levels, "database": db.index["fingerprint"], "database_settings": stamped_settings(db.index["settings"]),
            "calibration": db.index["calibration"], "blocks": tokens_fingerprint(blocks),
            "teacher": str(getattr(teacher, "path", ""))}


def stored_scores_path(db: Database, blocks: torch.Tensor, teacher: TeacherCache, all_levels: bool) -> Path:
    """Where the scores of `db` on `blocks` are kept beside the database: every run (and every target) that
    uses the database and these fitness blocks reads them instead of scoring again."""
    key = json.dumps(score_key(db, blocks, teacher, all_levels), sort_keys=True)
    return Path(db.path) / "replace_one" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def replace_one_scores(model: PreTrainedModel, adapter: ModelAdapter, db: Database, blocks: torch.Tensor,
                       teacher: TeacherCache, batch_size: int = 4, path: Path | None = None,
                       progress: bool = True, all_levels: bool = False) -> ReplaceOneScores:
    """KL to the teacher on `blocks` for every (kind, layer, level) of `db`, resuming from `path` if given.

    Args:
        all_levels: measure every level; otherwise two per module and the rest from the OBS errors.
    """
    key = score_key(db, blocks, teacher, all_levels)
    done: dict = {"key": key, "layers": {}, "seconds": 0.0}
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("key") == key:
                done = saved
        except (OSError, ValueError):
            log.warning("replace-one scores in %s are unreadable; scoring again", path)
    num_layers = len(adapter.layers(model))
    todo = [i for i in range(num_layers) if str(i) not in done["layers"]]
    if todo:
        started = time.time()
        with eval_mode(model), torch.inference_mode():
            hidden, kwargs = _layer_inputs(model, adapter, blocks, batch_size, last=max(todo))
            rows = {row.numpy().tobytes(): r for r, row in enumerate(blocks.cpu())}
            for i in tqdm(todo, desc="replace-one", disable=not progress):
                tail = _Tail(model, adapter, i, rows, hidden[i], kwargs)
                done["layers"][str(i)] = {kind: interpolated(
                    [lv.error for lv in db.levels[kind][i]],
                    {level: _score(tail, model, adapter, db, kind, i, level, blocks, teacher, batch_size)
                     for level in measured_levels(db, kind, i, all_levels)}) for kind in KINDS}
                done["seconds"] += time.time() - started
                started = time.time()
                if path is not None:
                    write_json(path, done)
    scores = {kind: [done["layers"][str(i)][kind] for i in range(num_layers)] for kind in KINDS}
    return ReplaceOneScores(scores, float(done["seconds"]), reused=not todo)


def _score(tail: _Tail, model, adapter, db, kind: str, layer: int, level: int, blocks, teacher, batch_size) -> float:
    if kind == "attention" and adapter.attention(adapter.layers(model)[layer]) is None:
        return 0.0
    if kind == "mlp" and adapter.mlp(adapter.layers(model)[layer]) is None:
        return 0.0
    with module_at_level(model, adapter, db, kind, layer, level):
        return kl_to_teacher(tail, blocks, teacher, batch_size=batch_size)


def _layer_inputs(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int,
                  last: int) -> tuple[list[torch.Tensor], list[dict]]:
    """The dense hidden states entering layers 0..`last`, each [n_blocks, seq_len, hidden], and, per layer,
    its keyword arguments for the first batch (masks of its attention type and RoPE, which do not depend
    on the tokens)."""
    captured = capture_first_layer_inputs(model, adapter, blocks, batch_size)
    masks = LayerMasks(model, list(captured.hidden), captured.kwargs, layer_type(model.config, 0),
                       captured.hidden[0].dtype)
    layers = adapter.layers(model)
    per_layer = [masks.kwargs(0, layer_type(model.config, i)) for i in range(len(layers))]
    current = captured.hidden
    out = []
    for i, layer in enumerate(layers[:last + 1]):
        out.append(torch.cat(current))
        if i < last:
            kind = layer_type(model.config, i)
            current = [(o[0] if isinstance(o, tuple) else o) for o in
                       (layer(h, **masks.kwargs(j, kind)) for j, h in enumerate(current))]
    return out, per_layer


def scores_in_store(model: PreTrainedModel, adapter: ModelAdapter, db: Database, blocks: torch.Tensor,
                    teacher: TeacherCache, batch_size: int = 4, progress: bool = True,
                    all_levels: bool = False) -> tuple[ReplaceOneScores, Path]:
    """The replace-one scores of `db` on `blocks`, read from beside the database (`stored_scores_path`) or scored
    and kept there; a run scoring the same database and blocks at the same time is waited for, then read.
    Returns the scores and their file."""
    stored = stored_scores_path(db, blocks, teacher, all_levels)
    with building(stored):
        scores = replace_one_scores(model, adapter, db, blocks, teacher, batch_size, stored, progress, all_levels)
    return scores, stored
