"""The MIP start of nas over the database's levels (`nas.start: mip`, the default with `--weights database`).

darwin's `mip` profile turns the replace-one KLs (each module alone at each level, the rest dense; Puzzle) into one
genotype by a mixed-integer program. Solving it takes seconds per size, so nas solves it at every `nas.mip_step`
of block sparsity inside the searched range (0.1, 0.15, ..., 0.75 by default) and a new study evaluates those
genotypes first: the one at the size the pick is asked for (`--sparsity` / `--target-params`, solved there too),
then the others coarse to fine (`spread_order`), so a budget of fewer trials than the start still spans the range and
holds the MIP genotype of the asked size; the sampler (local search, NSGA-II, random) then moves from them.

The scores are darwin's: measured on the first `search.replace_one_tokens` of the blocks the search scores KL on
(the calibration blocks after the database's, darwin's fitness pool at the default settings), kept beside the
shared database and keyed by its content, the blocks and the teacher (`levels.replace_one.stored_scores_path`),
so a darwin run and a nas run of the same model and data score them once between them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..arch.params import block_params
from ..arch.target import resolve_target
from ..atomic import write_text
from ..errors import UserError
from ..evaluation.teacher import TeacherCache
from ..evaluation.teacher_subset import TeacherSubset
from ..levels.assemble import assemble
from ..levels.budget import CostTable, make_budget
from ..levels.replace_one import scores_in_store
from ..models import LoadedModel
from ..obs.database import KINDS
from .level_space import LevelSpace

log = logging.getLogger(__name__)


@dataclass
class MipStart:
    configs: list[dict]  # the distinct genotypes inside the range, as nas configurations, in `spread_order`
    sparsities: list[float]  # the block sparsity each was assembled for (the first one, where several agree)
    scores_seconds: float  # what scoring the replace-one KLs took, whichever run did it
    scores_reused: bool  # read whole from the store


def mip_sparsities(sparsity_range: tuple[float, float] | None, step: float) -> list[float]:
    """The block sparsities the MIP is solved at: the multiples of `step` inside the range (the whole space:
    strictly between 0 and 1), smallest first."""
    low, high = sparsity_range or (0.0, 1.0)
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [round(k * step, 6) for k in range(first, last + 1) if 0 < k * step < 1]


def replace_one_blocks(blocks: torch.Tensor, teacher: TeacherCache, tokens: int) -> TeacherSubset:
    """The first blocks holding `tokens` tokens (all of them if fewer), with their share of `teacher`."""
    n = min(len(blocks), math.ceil(tokens / blocks.shape[1]))
    return TeacherSubset(teacher, blocks, list(range(n)))


def mip_start(dense: LoadedModel, space: LevelSpace, blocks: torch.Tensor, teacher: TeacherCache,
              sparsity_range: tuple[float, float] | None, step: float, tokens: int, all_levels: bool,
              feasible: Callable[[dict], bool], out: Path, batch_size: int = 4, progress: bool = True,
              first: float | None = None) -> MipStart:
    """The MIP assemblies of the replace-one KLs of `space`'s database at every `step` of block sparsity in the
    range, as configurations `feasible` accepts, without repeats: the one at block sparsity `first` (the pick's
    size, solved there too) first, then the largest and the smallest, then ever finer between them
    (`spread_order`); the scores are also copied to `out/replace_one.json` (the run keeps what it assembled from).

    Args:
        blocks, teacher: the search's KL blocks and their teacher; the first `tokens` tokens are scored.
    """
    if space.db is None:
        raise RuntimeError("the MIP start needs the database; build the space with LevelSpace.of_database")
    subset = replace_one_blocks(blocks, teacher, tokens)
    scores, stored = scores_in_store(dense.model, dense.adapter, space.db, subset.blocks, subset, batch_size,
                                     progress, all_levels)
    kept = out / "replace_one.json"
    if not kept.is_file() or kept.read_bytes() != stored.read_bytes():
        write_text(kept, stored.read_text())
    table = CostTable("params", space.db.costs("params"))
    dense_blocks = block_params(space.shape)
    configs, sparsities, seen = [], [], set()
    solved = mip_sparsities(sparsity_range, step)
    if first is not None:
        first = round(first, 6)
        solved = [first] + [s for s in solved if abs(s - first) > 1e-6]
    for sparsity in solved:
        target = resolve_target(space.shape, sparsity=sparsity)  # as darwin turns --sparsity into its budget
        try:
            budget = make_budget(table, table.full() * target.block_params / dense_blocks)
            genotype = assemble(scores.scores, table, budget)
        except UserError as e:  # out of the database's reach: the other sizes still start the search
            log.info("nas: no MIP start at sparsity %g (%s)", sparsity, e)
            continue
        config = {f"{kind}_{i}": level for kind in KINDS for i, level in enumerate(genotype.genes(kind))}
        key = tuple(sorted(config.items()))
        if key in seen or not feasible(config):
            continue
        seen.add(key)
        configs.append(config)
        sparsities.append(sparsity)
    if not configs:
        log.warning("nas: no MIP genotype lies inside the searched range; the sampler starts alone")
    head = [0] if first is not None and sparsities[:1] == [first] else []  # the pick's size, where it is inside
    by_size = sorted(range(len(head), len(configs)), key=lambda j: -space.num_params(configs[j]))
    order = head + [by_size[k] for k in spread_order(len(by_size))]
    return MipStart([configs[j] for j in order], [sparsities[j] for j in order], scores.seconds, scores.reused)


def spread_order(n: int) -> list[int]:
    """The positions 0..n-1 of a list sorted by size, coarse to fine: both ends, then the middle of each gap in turn
    (0, n-1, (n-1)//2, ...), so a search whose trials run out inside the start still spans the range."""
    if n <= 2:
        return list(range(n))
    order, gaps = [0, n - 1], [(0, n - 1)]
    while gaps:
        low, high = gaps.pop(0)
        if high - low < 2:
            continue
        middle = (low + high) // 2
        order.append(middle)
        gaps += [(low, middle), (middle, high)]
    return order
