"""Run by test_darwin_torchrun (under torchrun or alone): `evoprune darwin ARGS...` through the CLI, counting
the candidate evaluations this process made and the files it put into the run directory (every evoprune
write ends in os.replace); writes {world, evaluator class, evaluations, files written} to OUT_DIR/rankR.json.

usage: python darwin_torchrun_script.py OUT_DIR darwin ARGS...
"""

import json
import os
import sys
from pathlib import Path

import torch

from evoprune import cli
from evoprune.darwinlm import pipeline as darwin

torch.set_num_threads(1)
out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
run_dir = Path(argv[argv.index("--out") + 1]).resolve()
written = []
replace = os.replace


def recording_replace(src, dst, *args, **kwargs):
    if run_dir in Path(dst).resolve().parents:
        written.append(str(Path(dst).resolve().relative_to(run_dir)))
    return replace(src, dst, *args, **kwargs)


os.replace = recording_replace
made = []
make_evaluator = darwin.make_evaluator


def counting_make_evaluator(*args, **kwargs):
    evaluator = make_evaluator(*args, **kwargs)
    fitness = evaluator.fitness
    evaluator.local_evaluations = 0

    def counted(model, stage, g=None):
        evaluator.local_evaluations += 1
        return fitness(model, stage, g)

    evaluator.fitness = counted
    made.append(evaluator)
    return evaluator


darwin.make_evaluator = counting_make_evaluator
code = cli.main(argv)
rank = int(os.environ.get("RANK", "0"))
(out_dir / f"rank{rank}.json").write_text(json.dumps({
    "code": code, "world": int(os.environ.get("WORLD_SIZE", "1")), "class": type(made[0]).__name__,
    "local": made[0].local_evaluations, "evaluations": made[0].evaluations, "written": written}))
