"""Dense vs uniform vs depth pruning at several sparsities on one model, measured side by side.

    python bench/baselines.py                       # SmolLM2-135M, 25% and 50%, writes results/baselines.*
    python bench/baselines.py --sparsities 0.25 0.5 --seq-len 512 --eval-blocks 32

All models are evaluated in one process on the same held-out blocks, and latency is measured
round-robin across them, so speed ratios are comparable even on a noisy machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from evoprune.arch import params
from evoprune.atomic import write_json, write_text
from evoprune.config import load_config
from evoprune.evaluation.suite import evaluate_models, teacher_for
from evoprune.data import data_blocks
from evoprune.models import load_source
from evoprune.obs.calibration import collect_stats
from evoprune.baselines.depth import depth_spec
from evoprune.arch.target import resolve_target
from evoprune.baselines.uniform import uniform_spec
from evoprune.report import markdown_table, plot_bars

COLUMNS = ["model", "params", "block_params", "block_sparsity", "perplexity", "kl_to_teacher",
           "prefill_tokens_per_s", "decode_tokens_per_s", "prefill_speedup", "decode_speedup", "ideal_speedup"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calibration-blocks", type=int, default=32)
    ap.add_argument("--eval-blocks", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results")
    args = ap.parse_args()

    cfg = load_config(None, [f"model.source={args.model}", f"data.seq_len={args.seq_len}",
                             f"data.calibration_blocks={args.calibration_blocks}",
                             f"data.eval_blocks={args.eval_blocks}", f"eval.repeats={args.repeats}"])
    started = time.time()
    dense = load_source(cfg)
    shape = dense.adapter.shape(dense.model)
    calib = data_blocks(cfg, dense.tokenizer, "calibration", cfg.data.calibration_blocks)
    eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
    stats = collect_stats(dense.model, dense.adapter, calib, cfg.data.batch_size)
    heads = stats.head_energy(dense.adapter, dense.model)
    neurons = stats.neuron_energy(dense.adapter, dense.model)
    models, sparsity = {"dense": dense.model}, {"dense": 0.0}
    for s in args.sparsities:
        target = resolve_target(shape, sparsity=s)
        for name, spec in ((f"uniform-{s:g}", uniform_spec(shape, heads, neurons, target)),
                           (f"depth-{s:g}", depth_spec(shape, stats.block_influence(), target))):
            models[name] = dense.adapter.slice(dense.model, spec)
            sparsity[name] = spec.block_sparsity()
    teacher = teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, cfg.data.batch_size)
    rows = evaluate_models(models, eval_blocks, teacher, cfg.eval, cfg.data.batch_size)
    for name, row in rows.items():
        row["block_sparsity"] = sparsity[name]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = (f"{args.model}, {len(calib)} calibration and {len(eval_blocks)} held-out blocks of {args.seq_len} "
             f"tokens ({cfg.data.source}), latency batch 1, prompt {cfg.eval.prompt_len}, {cfg.eval.new_tokens} "
             f"decode steps, median of {args.repeats}; {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}; {time.time() - started:.0f} s")
    table = markdown_table(list(rows.values()), COLUMNS)
    write_json(out / "baselines.json", {"setup": setup, "rows": rows, "dense_block_params": params.block_params(shape)})
    plot_bars({k: r["perplexity"] for k, r in rows.items()}, "held-out perplexity (lower is better)", "perplexity (log scale)",
              out / "baselines_perplexity.png", log=True)
    plot_bars({k: r.get("decode_speedup", 0.0) for k, r in rows.items()}, "decode speedup vs dense", "x",
              out / "baselines_decode_speedup.png")
    write_text(out / "baselines.md", f"# Baselines\n\n{setup}\n\nCommand: `python {' '.join(sys.argv)}`\n\n{table}\n"
                                     "![perplexity](baselines_perplexity.png)\n![decode](baselines_decode_speedup.png)\n")
    print(table)


if __name__ == "__main__":
    main()
