"""Candidate fitness streamed layer by layer against the whole sliced model, side by side, on the embedded model.

    python bench/streamed_fitness.py --threads 2

For the uniform genotype, the quick profile's MIP start (when its replace-one scores are in the
bench work folder) and random genotypes of the default database: KL to the dense model on the
2,048-token fitness sample, computed (a) by slicing the whole candidate and running it, as before
issue 18, and (b) layer by layer without building it. Timed interleaved, best of `--repeats`, in
one process. Writes results/streamed_fitness.md.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from darwin_unseen import database_key
from evoprune.darwinlm import pipeline as darwin
from evoprune.atomic import write_text
from evoprune.config import load_config
from evoprune.evaluation.streamed_kl import streamed_kl
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.data import data_blocks
from evoprune.models import load_source
from evoprune.arch.target import resolve_target
from evoprune.report import markdown_table
from evoprune.levels.assemble import assemble
from evoprune.levels.budget import make_budget, uniform_genotype
from evoprune.levels.genotype import Genotype


def best_of(repeats: int, fn) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--random", type=int, default=4, help="random genotypes besides uniform and MIP")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", default="results/tmp/darwin_unseen")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, [])
    dense = load_source(cfg)
    db = darwin.build_database(cfg, dense, Path(args.work) / f"database-{database_key(cfg)}-params-obs")
    table = darwin.cost_table(db, "params")
    shape = dense.adapter.shape(dense.model)
    budget = make_budget(table, resolve_target(shape, sparsity=0.5).block_params)
    first = cfg.data.calibration_blocks
    blocks = data_blocks(cfg, dense.tokenizer, "calibration", first + 4)[first:]  # 2,048 fitness tokens
    teacher = teacher_for(dense.model, str(dense.path), blocks, cfg.eval, cfg.data.batch_size, False)
    genotypes = {"uniform": uniform_genotype(table, budget)}
    scores = Path(args.work) / "mip-0.5-seed0" / "replace_one.json"
    if scores.is_file():
        layers = json.loads(scores.read_text())["layers"]
        table_scores = {kind: [layers[str(i)][kind] for i in range(shape.num_layers)] for kind in ("attention", "mlp")}
        genotypes["MIP (quick)"] = assemble(table_scores, table, budget)
    rng = random.Random(0)
    for k in range(args.random):
        genotypes[f"random {k}"] = Genotype(
            tuple(rng.randrange(db.num_levels("attention", i)) for i in range(shape.num_layers)),
            tuple(rng.randrange(db.num_levels("mlp", i)) for i in range(shape.num_layers)))
    rows = []
    for name, g in genotypes.items():
        spec, replace = db.stitch(list(g.attention), list(g.mlp), dense.adapter)
        whole, t_whole = best_of(args.repeats, lambda: kl_to_teacher(dense.adapter.slice(dense.model, spec, replace),
                                                                     blocks, teacher, cfg.data.batch_size))
        streamed, t_streamed = best_of(args.repeats, lambda: streamed_kl(dense.model, dense.adapter, spec, replace,
                                                                         blocks, teacher, cfg.data.batch_size))
        rows.append({"genotype": name, "KL whole model": whole, "KL streamed": streamed,
                     "abs difference": abs(whole - streamed), "s whole": t_whole, "s streamed": t_streamed,
                     "time ratio": t_streamed / t_whole})
        print(rows[-1], flush=True)
    text = ("# Candidate fitness: streamed layer by layer vs the whole sliced model\n\n"
            f"`python bench/streamed_fitness.py --threads {args.threads}`: SmolLM2-135M, default database, 50% of "
            f"block parameters, KL on 2,048 fitness tokens, best of {args.repeats} interleaved runs in one process.\n\n"
            + markdown_table(rows))
    write_text(Path(args.out) / "streamed_fitness.md", text)
    print(text)


if __name__ == "__main__":
    main()
