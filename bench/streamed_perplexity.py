"""Held-out perplexity layer by layer against the whole-model forward, side by side, on the embedded model.

    taskset -c 0 env OMP_NUM_THREADS=1 python bench/streamed_perplexity.py --threads 1

SmolLM2-135M loaded two ways: as stored (float32, memory-mapped) and as a bfloat16 copy, memory-mapped
and computed in float32 one module at a time (how a model larger than RAM is loaded). For each, the
perplexity of `--blocks` held-out blocks is computed (a) by `mean_nll`, one whole-model forward per
batch, and (b) by `streamed_mean_nll`, every batch through one layer before the next and the LM head
over chunks of positions. Runs interleave in one process (best time of `--repeats`); the memory is
the peak above the stage's start, sampled every 25 ms (`evoprune.memory`). Writes
results/streamed_perplexity.md.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from evoprune.assets import embedded_model_dir
from evoprune.atomic import write_text
from evoprune.config import load_config
from evoprune.evaluation.perplexity import mean_nll
from evoprune.evaluation.streamed_perplexity import streamed_mean_nll
from evoprune.memory import MemoryWatch
from evoprune.data import data_blocks
from evoprune.models import load_source
from evoprune.report import markdown_table

MIB = 2**20


def bf16_copy(folder: Path) -> Path:
    """The embedded model saved in bfloat16 under `folder` (written once)."""
    if not (folder / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.bfloat16)
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (embedded_model_dir() / name).is_file():
                (folder / name).write_bytes((embedded_model_dir() / name).read_bytes())
    return folder


def measure(watch: MemoryWatch, stage: str, fn) -> tuple[float, float, float]:
    """(value, wall seconds, CPU seconds of this process) of `fn()` run inside `watch`'s stage `stage`."""
    with watch.stage(stage):
        start, cpu = time.perf_counter(), time.process_time()
        value = fn()
        return value, time.perf_counter() - start, time.process_time() - cpu


def stage_figures(watch: MemoryWatch, stage: str) -> dict:
    record = watch.stages[stage]
    return {"peak anon above start (MiB)": (record.peak_anon - record.start_anon) / MIB,
            "peak RSS (MiB)": record.peak_rss / MIB}


def compare(watch: MemoryWatch, label: str, source: str, dtype: str, args: argparse.Namespace) -> list[dict]:
    """Rows of both methods on the model `source` loaded in `dtype` (released on return)."""
    cfg = load_config(None, [f"model.dtype={dtype}", f"data.seq_len={args.seq_len}"])
    model = load_source(cfg, source)
    blocks = data_blocks(cfg, model.tokenizer, "eval", args.blocks)
    runs = {"whole model": lambda tokens: mean_nll(model.model, tokens, args.batch_size),
            "layer by layer": lambda tokens: streamed_mean_nll(model.model, tokens, args.batch_size)}
    for fn in runs.values():  # untimed warm-up on one block: first touch of the weights, kernel setup
        fn(blocks[:1])
    results: dict[str, tuple[float, float, float]] = {}
    for _ in range(args.repeats):
        for method, fn in runs.items():
            nll, wall, cpu = measure(watch, f"{label} | {method}", lambda: fn(blocks))
            best = results.get(method, (nll, wall, cpu))
            results[method] = (nll, min(best[1], wall), min(best[2], cpu))
    whole_nll = results["whole model"][0]
    rows = []
    for method, (nll, wall, cpu) in results.items():
        rows.append({"weights": label, "method": method, "perplexity": f"{torch.tensor(nll).exp():.6f}",
                     "rel. difference": f"{abs(nll - whole_nll) / whole_nll:.1e}", "wall s": f"{wall:.1f}",
                     "CPU s": f"{cpu:.1f}",
                     **{k: f"{v:.0f}" for k, v in stage_figures(watch, f"{label} | {method}").items()}})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=16, help="held-out blocks")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", default="results/tmp/streamed_perplexity")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sources = {"float32, mapped": ("smollm2-135m", "float32"),
               "bfloat16, mapped, computed in float32": (str(bf16_copy(Path(args.work) / "bf16")), "bfloat16")}
    rows = []
    with MemoryWatch() as watch:
        for label, (source, dtype) in sources.items():
            rows += compare(watch, label, source, dtype, args)
            gc.collect()
    batches = -(-args.blocks // args.batch_size)
    text = ("# Perplexity layer by layer vs the whole-model forward\n\n"
            f"`taskset -c 0 env OMP_NUM_THREADS=1 python bench/streamed_perplexity.py --threads {args.threads}`: "
            f"SmolLM2-135M, {args.blocks} held-out blocks x {args.seq_len} tokens, batch {args.batch_size}, best of "
            f"{args.repeats} interleaved run(s) in one process after a one-block warm-up. \"rel. difference\" is that "
            "of the mean NLL to the whole-model one; CPU s is this process's CPU time (the machine was shared, so "
            "wall times are noisier).\n\n" + markdown_table(rows) +
            f"\nThe whole-model forward reads every layer's weights once per batch ({batches} times here); layer by "
            "layer reads each once, which is what matters when the mapped weights do not fit in RAM (the kernel then "
            "rereads them from disk for every batch). Here they fit, so the table shows what streaming costs or "
            "saves when it is not needed: the time of the same computation in another order, and the memory of "
            "the logits (the whole-model path holds a batch's [batch, seq_len, vocab] float32 logits and their "
            "log-softmax; layer by layer holds the hidden states of all blocks and one 128 MiB chunk of logits). "
            "One run each on a shared machine: time differences of about 10% either way are within run-to-run noise. "
            "`eval.streamed=auto` streams only when the weights exceed half of MemAvailable.\n")
    write_text(Path(args.out) / "streamed_perplexity.md", text)
    print(text)


if __name__ == "__main__":
    main()
