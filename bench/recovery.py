"""Recovery training of 50%-pruned models: held-out perplexity against tokens trained.

    python bench/recovery.py                                   # SmolLM2-135M, writes results/recovery.*
    python bench/recovery.py --budgets 4096 8192 16384 --seq-len 256 --darwin runs/darwin-50/model \
        --teacher-source online cached

Prunes `--model` with `evoprune prune --method uniform` (50% of block parameters) and trains it,
and with `--darwin PATH` also a DarwinLM export of the same sparsity, once per variant
(distillation + LM, LM only, LoRA on distillation + LM) for the largest budget with
`evoprune.train.recovery.recover`, evaluating held-out perplexity at every budget on the way (one
cosine schedule over the largest budget, so the smaller budgets are points on that run, not
separate runs with their own schedules). Budget 0 is the pruned model itself.

`--teacher-source` runs the distillation variants with the teacher online (every step), from the
cached teacher (its top-`--teacher-top-k` log-probs + rest mass on the training blocks, computed
once; `train.teacher_source=cached`; caches small enough are stored whole), or both side by side.
`wall_s` includes building the cache.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from evoprune.baselines import pipeline  # noqa: E402
from evoprune.atomic import staged_file, write_json, write_text  # noqa: E402
from evoprune.config import load_config  # noqa: E402
from evoprune.models import resolve_model_path  # noqa: E402
from evoprune.report import markdown_table  # noqa: E402
from evoprune.recovery import RecoveryRunConfig, recover  # noqa: E402

VARIANTS = {"distill+lm": ["train.loss=lm+kd"], "lm": ["train.loss=lm", "train.teacher=null"],
            "lora distill+lm": ["train.loss=lm+kd", "train.lora=true", "train.lr=0.001"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--budgets", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-blocks", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--work", default="runs/bench-recovery")
    ap.add_argument("--out", default="results")
    ap.add_argument("--darwin", help="an exported DarwinLM model at the same sparsity (e.g. runs/darwin-50/model): "
                                     "its curves are drawn beside the uniform baseline's")
    ap.add_argument("--teacher-source", nargs="+", choices=["online", "cached"], default=["online"],
                    help="teacher of the distillation variants: online, cached (top-k on disk) or both")
    ap.add_argument("--teacher-top-k", type=int, default=64, help="tokens per position in the cached teacher")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work, out = Path(args.work), Path(args.out)
    data = [f"data.seq_len={args.seq_len}", f"data.eval_blocks={args.eval_blocks}", "data.batch_size=4"]
    pruned_run = work / "pruned"
    if not (pruned_run / "model" / "config.json").exists():
        cfg = load_config(None, [f"model.source={args.model}", "prune.method=uniform", f"prune.sparsity={args.sparsity}",
                                 "eval.latency=false", "data.calibration_blocks=16", *data])
        pipeline.prune(cfg, pruned_run, force=True, progress=False)
    step_tokens = args.batch_size * args.seq_len
    budgets = sorted(args.budgets)
    if any(b % step_tokens for b in budgets) or math.gcd(*budgets) % step_tokens:
        raise SystemExit(f"budgets must be multiples of one step ({step_tokens} tokens)")
    eval_every = math.gcd(*budgets) // step_tokens
    rows, curves = [], {}
    models = [("uniform", pruned_run / "model")] + ([("darwin", Path(args.darwin))] if args.darwin else [])
    sources = {"online": [], "cached": ["train.teacher_source=cached", f"train.teacher_top_k={args.teacher_top_k}"]}
    plan = []
    for pruned, source in models:
        for variant, extra in VARIANTS.items():
            distills = "train.teacher=null" not in extra
            for teacher in (args.teacher_source if distills else ["-"]):
                plan.append((pruned, source, variant, teacher, extra + sources.get(teacher, [])))
    for pruned, source, variant, teacher, extra in plan:
        label = "cached" if teacher == "cached" else ""
        name = " ".join(filter(None, [pruned, variant, label]))
        run = work / name.replace(" ", "-").replace("+", "_")
        shutil.rmtree(run, ignore_errors=True)
        cfg = load_config(None, [f"model.source={source}", f"train.teacher={resolve_model_path(args.model)}",
                                 f"train.tokens={budgets[-1]}", f"train.batch_size={args.batch_size}",
                                 f"train.lr={args.lr}", "train.warmup_steps=2", f"train.eval_every={eval_every}",
                                 "train.checkpoint_every=0", *data, *extra], cls=RecoveryRunConfig)
        started = time.time()
        recover(cfg, run, force=True, progress=False)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        ppl = {r["tokens"]: r["eval_ppl"] for r in records if "eval_ppl" in r}
        curves[name] = sorted(ppl.items())
        summary = json.loads((run / "metrics.json").read_text())
        speed = summary["tokens_per_s"]
        row = {"pruned": pruned, "variant": variant, "teacher": summary.get("teacher") or "-", "ppl@0": ppl[0],
               **{f"ppl@{b}": ppl[b] for b in budgets}, "tokens_per_s": speed,
               "wall_s": round(time.time() - started, 1)}
        rows.append(row)
        print(row, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), constrained_layout=True)
    for name, points in curves.items():
        ax.plot(*zip(*points), "o-", label=name)
    ax.set(xlabel="tokens trained", ylabel="held-out perplexity (log)", yscale="log",
           title=f"recovery of {args.model} at {args.sparsity:.0%} block sparsity")
    ax.legend()
    with staged_file(out / "recovery.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    write_json(out / "recovery.json", {"rows": rows, "args": vars(args), "machine": platform.platform(),
                                       "threads": torch.get_num_threads()})
    write_text(out / "recovery.md", "# Recovery training\n\n" + markdown_table(rows) + "\n![recovery](recovery.png)\n\n"
               f"Made by `python bench/recovery.py` with {vars(args)}; "
               f"eval: {args.eval_blocks} held-out blocks of {args.seq_len} tokens; one process, "
               f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}.\n")


if __name__ == "__main__":
    main()
