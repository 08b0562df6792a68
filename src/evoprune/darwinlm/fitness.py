"""Candidate evaluation: stitch a genotype into a model, train it briefly, score its KL to the teacher."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..errors import UserError
from ..evaluation.streamed_kl import streamed_kl
from ..weights.compute_dtype import compute_dtype_of, inference_slice
from ..evaluation.teacher import TeacherCache, kl_to_teacher
from ..evaluation.teacher_subset import TeacherSubset
from ..obs.database import Database
from ..training import TrainConfig, train_on_blocks
from ..levels.genotype import Genotype
from .survivors import SurvivorStore


@dataclass(frozen=True)
class Stage:
    train_tokens: int  # tokens of brief training before scoring (0 = none)
    fitness_tokens: int  # tokens the KL is measured on
    survivors: int  # candidates kept after this stage


class FitnessPool:
    """Calibration blocks (with their teacher) that each selection draws its stages' fitness blocks from.

    A fresh draw per selection (as EvoPress, on which DarwinLM builds, samples its fitness data)
    keeps the search from fitting the noise of one small fixed sample; the parent, competing again
    in every generation, is re-scored on new tokens each time.

    Args:
        blocks: the pool, [n_blocks, seq_len]; keep it disjoint from the blocks the database was
            built on, or the fitness rewards modules whose weight update fits those very tokens.
        teacher: the teacher cache of `blocks`.
        stage_blocks: blocks each stage is scored on.
    """

    def __init__(self, blocks: torch.Tensor, teacher: TeacherCache, stage_blocks: list[int]):
        if max(stage_blocks) > len(blocks):
            raise UserError(f"a selection stage needs {max(stage_blocks)} fitness blocks but the pool has "
                            f"{len(blocks)}; raise search.fitness_pool or lower search.fitness_tokens")
        self.blocks, self.teacher, self.stage_blocks = blocks, teacher, stage_blocks

    def draw(self, seed: int) -> tuple[list[torch.Tensor], list[TeacherSubset]]:
        """Each stage's blocks and teacher: a random subset of the pool, the same for the same seed."""
        rng = random.Random(seed)
        subsets = [TeacherSubset(self.teacher, self.blocks, sorted(rng.sample(range(len(self.blocks)), n)))
                   for n in self.stage_blocks]
        return [s.blocks for s in subsets], subsets


class CandidateEvaluator:
    """Everything a candidate evaluation needs, prepared once per search.

    Stage s of a selection scores on `stage_blocks[s]` against `stage_teachers[s]`; with a
    `pool`, these are drawn anew at the start of every selection (`begin_selection`).
    """

    rotate_training = False
    train_embeddings = False
    survivors: SurvivorStore | None = None  # trained candidates between stages, on disk
    train_start = 0  # the train block this selection's brief training starts at

    def __init__(self, dense: PreTrainedModel, adapter: ModelAdapter, db: Database,
                 stage_blocks: list[torch.Tensor], stage_teachers: list[TeacherCache], train_blocks: torch.Tensor,
                 train_cfg: TrainConfig, batch_size: int = 4, pool: FitnessPool | None = None,
                 rotate_training: bool = False, train_embeddings: bool = False):
        self.dense, self.adapter, self.db = dense, adapter, db
        self.stage_blocks, self.stage_teachers = stage_blocks, stage_teachers
        self.train_blocks, self.train_cfg = train_blocks, train_cfg
        self.batch_size = batch_size
        self.pool = pool
        self.rotate_training = rotate_training
        self.train_embeddings = train_embeddings
        self.evaluations = 0

    def begin_selection(self, seed: int) -> None:
        """Called at the start of every selection: draw its fitness blocks from the pool, if there is one, and
        with `rotate_training` the block its brief training starts at (the train blocks are a cycle), so that
        generations do not all select for fitting the same few training blocks."""
        if self.pool is not None:
            self.stage_blocks, self.stage_teachers = self.pool.draw(seed)
        if self.rotate_training:
            self.train_start = random.Random(f"train-{seed}").randrange(len(self.train_blocks))

    def build(self, g: Genotype) -> PreTrainedModel:
        """The candidate as a model of its own (for training it), in the dense model's compute dtype. Its
        embeddings, LM head and final norm are frozen unless `train_embeddings`, and then shared with the
        dense model (never copied) when it computes in its stored dtype."""
        spec, replace = self.db.stitch(list(g.attention), list(g.mlp), self.adapter)
        compute = compute_dtype_of(self.dense)
        share = not self.train_embeddings and compute == next(self.dense.parameters()).dtype
        model = self.adapter.slice(self.dense, spec, replace, share_embeddings=share).to(compute)
        if not self.train_embeddings:
            for module in (model.get_input_embeddings(), model.get_output_embeddings(), self.adapter.final_norm(model)):
                module.requires_grad_(False)
        return model

    def view(self, g: Genotype) -> PreTrainedModel:
        """The untrained candidate `g` as a model for inference only (shares the dense embeddings and head)."""
        spec, replace = self.db.stitch(list(g.attention), list(g.mlp), self.adapter)
        return inference_slice(self.dense, self.adapter, spec, replace)

    def kl(self, g: Genotype, blocks: torch.Tensor, teacher: TeacherCache) -> float:
        """KL of the untrained candidate `g`, computed layer by layer: no copy of the model is made."""
        spec, replace = self.db.stitch(list(g.attention), list(g.mlp), self.adapter)
        return streamed_kl(self.dense, self.adapter, spec, replace, blocks, teacher, batch_size=self.batch_size)

    def train(self, model: PreTrainedModel, tokens: int, seed: int, start_block: int = 0) -> None:
        cfg = dataclasses.replace(self.train_cfg, seed=seed)
        train_on_blocks(model, self.train_blocks, tokens, cfg, start_block=start_block,
                        teacher=self.dense if cfg.uses_teacher else None)

    def fitness(self, model: PreTrainedModel | None, stage: int, g: Genotype | None = None) -> float:
        """KL of a built (trained) candidate, or with `model=None` of the untrained genotype `g`, streamed."""
        self.evaluations += 1
        blocks, teacher = self.stage_blocks[stage], self.stage_teachers[stage]
        if model is None:
            return self.kl(g, blocks, teacher)
        return kl_to_teacher(model, blocks, teacher, batch_size=self.batch_size)

    def assign(self, pool: list[Genotype]) -> None:
        """Called once per selection with its pool (a distributed evaluator shares it out here)."""

    def owns(self, g: Genotype) -> bool:
        """Whether this process trains and scores `g` (always, in one process)."""
        return True

    def score_stage(self, pool: list[Genotype], models: dict[Genotype, object], s: int, stage: Stage,
                    seed: int, seen_tokens: int, keep: int) -> dict[Genotype, float]:
        """Train and score this process's candidates of `pool` for stage `s`; returns their scores.

        A candidate is built when it is first trained, on from token `seen_tokens` of the train blocks;
        until then it stays a genotype (None in `models`) and its KL is computed layer by layer. `models`
        holds the previous stage's survivors on entry and, on return, only the `keep` best of this stage,
        trained ones parked on disk (`offload`): only the candidate at hand is ever in memory.
        """
        carried = {g: models.pop(g) for g in list(models)}
        order = {g: i for i, g in enumerate(pool)}
        scores: dict[Genotype, float] = {}
        for g in pool:
            if not self.owns(g):
                continue
            handle = carried.pop(g, None)  # None: never trained, so scored without building it
            model = None if handle is None else self.restore(g, handle)
            if stage.train_tokens:
                model = self.build(g) if model is None else model
                self.train(model, stage.train_tokens, seed=seed * 1000 + s,
                           start_block=self.train_start + seen_tokens // self.train_blocks.shape[1])
            scores[g] = self.fitness(model, s, g)
            models[g] = None if model is None else self.offload(model)
            del model
            if len(models) > keep:
                del models[max(models, key=lambda c: (scores[c], order[c]))]
        return scores

    def offload(self, model: PreTrainedModel):
        """Park a trained candidate until its next stage (on disk); returns what `restore` takes."""
        if self.survivors is None:
            self.survivors = SurvivorStore()
        return self.survivors.put(model, {t.data_ptr() for t in self.dense.state_dict().values()})

    def restore(self, g: Genotype, handle) -> PreTrainedModel:
        return self.survivors.get(handle, lambda: self.build(g))

    def end_stage(self, kept: set) -> None:
        """Called after every stage with the handles still needed, and with none at the end of a selection."""
        if self.survivors is not None:
            self.survivors.keep_only(kept)


def select(pool: list[Genotype], stages: list[Stage], evaluator: CandidateEvaluator, seed: int
           ) -> tuple[Genotype, list[dict[Genotype, float]]]:
    """Training-aware selection: every stage trains the survivors briefly, scores them, keeps the best.

    Training continues across stages on the same candidate weights, and all candidates of a stage
    see the same training tokens, so they are compared on equal terms. Only the current survivors
    are held in memory. Returns the winner and the fitness of each candidate at each stage.
    """
    unique = list(dict.fromkeys(pool))
    evaluator.begin_selection(seed)
    evaluator.assign(unique)
    models: dict[Genotype, object] = {}  # this process's survivors: None (not trained yet) or `offload`'s handle
    scores: list[dict[Genotype, float]] = []
    seen_tokens = 0
    for s, stage in enumerate(stages):
        keep = max(1, stage.survivors)
        stage_scores = evaluator.score_stage(unique, models, s, stage, seed, seen_tokens, keep)
        seen_tokens += stage.train_tokens
        scores.append(stage_scores)
        unique = sorted(unique, key=lambda g: (stage_scores[g], unique.index(g)))[:keep]
        for g in [g for g in models if g not in unique]:
            del models[g]
        evaluator.end_stage(set(models.values()))
    evaluator.end_stage(set())
    return unique[0], scores
