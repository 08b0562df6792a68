"""Run by test_distributed_fitness under torchrun (or alone): one DarwinLM selection + a short evolution
with DistributedCandidateEvaluator on the tiny model; rank 0 writes what was selected as JSON.

usage: python distributed_fitness_script.py ROOT OUT_JSON WORK_DIR
"""

import json
import random
import sys
from pathlib import Path

import torch

from evoprune.darwinlm import pipeline as darwin
from evoprune.config import load_config
from evoprune.models import load_model
from evoprune.obs.database import Database
from evoprune.arch.target import resolve_target
from evoprune.levels.budget import make_budget, uniform_genotype
from evoprune.darwinlm.distributed_fitness import DistributedCandidateEvaluator
from evoprune.darwinlm.evolution import EvolutionSettings, evolve
from evoprune.darwinlm.fitness import select
from evoprune.darwinlm.mutation import random_genotype

torch.set_num_threads(1)
root, out_json, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = load_config(None, [f"model.source={root / 'dense'}", f"data.source={root / 'corpus.txt'}", "data.seq_len=32",
                         "data.calibration_blocks=4", "data.batch_size=2", "database.num_levels=5",
                         "search.train_tokens=[0,64]", "search.fitness_tokens=[64,128]", "search.survivors=[3,1]",
                         "search.lr=0.001", "prune.sparsity=0.4"])
dense = load_model(cfg.model.source)
from evoprune.darwinlm.distributed_fitness import init_distributed  # noqa: E402

rank, world = init_distributed()
db = Database.build(dense.model, dense.adapter, torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(0)),
                    darwin.database_settings(cfg), work / f"db-{rank}", batch_size=2, progress=False)
stages = darwin.stages_of(cfg)
evaluator = DistributedCandidateEvaluator.from_evaluator(darwin.make_evaluator(cfg, dense, db, stages, False))
table = darwin.cost_table(db, "params")
shape = dense.adapter.shape(dense.model)
target = resolve_target(shape, cfg.prune.sparsity, None)
budget = make_budget(table, target.block_params)
rng = random.Random(0)
uniform = uniform_genotype(table, budget)
pool = [uniform] + [random_genotype(table, budget, rng, uniform, 30, True) for _ in range(6)]
winner, scores = select(pool, stages, evaluator, seed=7)
result = evolve(evaluator, table, budget, stages, EvolutionSettings(offspring=3, generations=2, seed=0),
                work / f"search-{rank}", {"test": 1}, progress=False)
if rank == 0:
    out_json.write_text(json.dumps({
        "world": world, "winner": winner.to_dict(), "evaluations": result.state.evaluations,
        "scores": [[[g.to_dict(), v] for g, v in stage.items()] for stage in scores],
        "parent": result.state.parent.to_dict(),
        "history": [{k: v for k, v in h.items() if k != "seconds"} for h in result.state.history]}))
