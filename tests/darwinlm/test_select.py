"""Staged selection keeps only the survivors in memory and ranks exactly as scoring everyone would."""

from __future__ import annotations

import gc
import random
import weakref

import torch

from evoprune.darwinlm.fitness import CandidateEvaluator, Stage, select
from evoprune.levels.genotype import Genotype


class Candidate:
    def __init__(self, g: Genotype):
        self.g, self.trained = g, 0


class FakeEvaluator(CandidateEvaluator):
    """Fitness is a fixed random number per genotype, lowered by training; counts live candidates."""

    def __init__(self, seed: int):
        self.rng, self.noise, self.live, self.peak = random.Random(seed), {}, weakref.WeakSet(), 0
        self.train_blocks = torch.zeros(4, 8)
        self.evaluations, self.pool = 0, None

    def build(self, g):
        gc.collect()
        c = Candidate(g)
        self.live.add(c)
        self.peak = max(self.peak, len(self.live))
        return c

    def offload(self, model):
        return model  # kept in memory: the peak counts survivors

    def restore(self, g, handle):
        return handle

    def train(self, model, tokens, seed, start_block=0):
        model.trained += tokens

    def fitness(self, model, stage, g=None):
        """Untrained candidates come as `model=None` and their genotype (scored without building them)."""
        self.evaluations += 1
        key = (model.g if model is not None else g, stage)
        self.noise.setdefault(key, self.rng.random())
        return self.noise[key] - 1e-4 * (model.trained if model is not None else 0)


def test_select_bounds_memory_and_ranks_every_stage():
    pool = [Genotype((i,), (i % 3,)) for i in range(40)]
    stages = [Stage(0, 8, 4), Stage(8, 16, 2), Stage(8, 32, 1)]
    ev = FakeEvaluator(0)
    winner, scores = select(pool, stages, ev, seed=0)
    assert len(scores[0]) == 40 and len(scores[1]) == 4 and len(scores[2]) == 2
    assert set(scores[1]) == set(sorted(scores[0], key=scores[0].get)[:4])
    assert set(scores[2]) == set(sorted(scores[1], key=scores[1].get)[:2])
    assert winner == min(scores[2], key=scores[2].get)
    assert ev.peak <= 4 + 1 + 1  # survivors + the candidate being scored (+1 awaiting collection)
    assert ev.evaluations == 46
