"""Trained survivors parked on disk between stages: the same selection as keeping them in memory, and no files left."""

from __future__ import annotations

import dataclasses
import random

from evoprune.darwinlm import pipeline as darwin
from evoprune.darwinlm.fitness import CandidateEvaluator, Stage, select
from evoprune.levels.genotype import Genotype


class InMemory(CandidateEvaluator):
    def offload(self, model):
        return model

    def restore(self, g, handle):
        return handle


def _pool(db, n: int) -> list[Genotype]:
    rng = random.Random(0)
    layers = db.shape.num_layers
    return [Genotype(tuple(rng.randrange(db.num_levels("attention", i)) for i in range(layers)),
                     tuple(rng.randrange(db.num_levels("mlp", i)) for i in range(layers))) for _ in range(n)]


def test_parking_survivors_on_disk_selects_what_keeping_them_in_memory_selects(tiny_db):
    cfg, dense, db, blocks, teacher = tiny_db
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, fitness_pool=0))
    stages = [Stage(32, 32, 3), Stage(32, 64, 2), Stage(0, 64, 1)]
    on_disk = darwin.make_evaluator(cfg, dense, db, stages, progress=False)
    in_memory = InMemory.__new__(InMemory)
    in_memory.__dict__.update(on_disk.__dict__)
    pool = _pool(db, 5)
    winner, scores = select(pool, stages, on_disk, seed=3)
    assert (winner, scores) == select(pool, stages, in_memory, seed=3)
    assert on_disk.survivors is not None and on_disk.survivors.count == 5 + 3 + 2  # every trained candidate scored
    assert not list(on_disk.survivors.root.glob("*.safetensors"))
    assert sum(p.numel() for p in dense.model.parameters()) > 0
