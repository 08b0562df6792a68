"""The seeds' model sizes on this machine: time and peak memory of every stage of the chain.

    python bench/scale.py                          # every case below (about 1.5 h on 2 cores)
    python bench/scale.py --cases 8b-wide4 --threads 2
    python bench/scale.py --cases 8b-database --database-layers 2

Random-init checkpoints with the real configs (bf16, written shard by shard, cached under the
user cache; `evoprune.weights.random_checkpoint`) go through the real CLI, one subprocess per step.
Each step's peak RSS and peak anonymous memory are sampled from outside (/proc/PID/status), and
the per-stage figures come from the run's own metrics.json (`evoprune.memory`). Cases:

* `1b`: Llama-3.2-1B shape, the whole `evoprune darwin --profile mip` pipeline with calibration,
  fitness and evaluation sizes that fit here.
* `8b-database`: Llama-3.1-8B shape, full depth (32 layers): `evoprune database` for the first
  `--database-layers` layers (per-layer time, to extrapolate), then stopped.
* `embedded`: the README's main job (SmolLM2-135M, quick) at `--before` and at HEAD, side by side
  (both at once, one core each): the same genotype, and the wall-time ratio.
* `wide`: a wide, shallow Llama-3-style shape (hidden 2048, MLP 8192, 6 layers, vocabulary 128,256,
  untied: 0.89B parameters, bf16): `prune --method uniform` and `database`, each unbounded and under
  `--max-memory` (2 GiB), every stage's estimate (`memory_plan.plan_estimates`) beside its measured peak
  anonymous memory above the process's own at the start of the run (Python, torch: ≈ 0.3 GiB, measured),
  each run with a cache of its own (no teacher, quality or database cache from an earlier run).
* `8b-wide4`: the 8B width with 4 layers (every memory term but depth is the 8B one): database,
  a tiny search, the streamed export, and reload of the export with stock transformers in a fresh
  process (layer count, shapes, one forward on a short prompt).

Rows go to results/scale_rows/<case>.json and the table to results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evoprune.assets import embedded_model_dir
from evoprune.atomic import write_json, write_text
from evoprune.report import markdown_table
from evoprune.weights.random_checkpoint import LLAMA_3_1_8B, LLAMA_3_2_1B, with_layers

GIB = 2**30
COLUMNS = ["case", "step", "stage", "seconds", "peak RSS GiB", "peak anon GiB"]
SMALL = ["model.dtype=bfloat16", "data.seq_len=256", "data.batch_size=2", "eval.latency=false"]
CASES = {
    "1b": ("Llama-3.2-1B shape, darwin --profile mip", LLAMA_3_2_1B),
    "8b-database": ("Llama-3.1-8B shape (32 layers), first database layers", LLAMA_3_1_8B),
    "8b-wide4": ("Llama-3.1-8B width, 4 layers: database, search, export, reload", with_layers(LLAMA_3_1_8B, 4)),
    "embedded": ("SmolLM2-135M, the main job before and after the memory-bounded chain", None),
    "wide": ("wide 0.89B: prune uniform and database, unbounded and under --max-memory",
             {**with_layers(LLAMA_3_2_1B, 6), "tie_word_embeddings": False}),
    "8b-uniform": ("Llama-3.1-8B shape: prune uniform + export under --max-memory 20, stock reload", LLAMA_3_1_8B),
}
# eval.unseen_blocks / repeats / warmup: fewer batches of the same size (the peaks are per batch), to save time
WIDE_COMMANDS = {"prune": ["prune", "--method", "uniform", "--sparsity", "0.5", "data.calibration_blocks=4",
                           "data.eval_blocks=2", "eval.unseen_blocks=2", "eval.repeats=1", "eval.warmup=1"],
                 "database": ["database", "--sparsity", "0.5", "data.calibration_blocks=4", "database.store=run"]}
# What held the memory of `prune` and `database` on the wide shape before the bounded path (issue 30: 7.33 and
# 5.36 GiB peak anonymous; 7.41 GiB measured again here for prune), found by reading each stage's code against
# its measured peak; sizes for the wide shape, batch 4 x 512 tokens.
WIDE_HOLDERS = """| stage | what was resident at its peak | size | now |
|---|---|---|---|
| load model (every command) | the bf16 checkpoint copied into fp32: `model.dtype` defaults to float32 and a dtype other than the stored one bypassed the mapped loader | 3.56 GB | kept mapped as stored, each module run in fp32 when it runs (`model.bounded`, chosen by `--max-memory`): 0.06 GiB (the tokenizer) |
| calibration | each batch's full-vocabulary logits (4 × 512 × 128,256 × 4 B), which the statistics never read | 1.05 GB | the forward stops after the final norm |
| evaluation (teacher cache, held-out figures, unseen text) | a batch's logits and their log-softmax, [B, 511, 128,256] fp32 each, and the KL's temporaries of the same size | 2 × 0.5 GB (2 held-out blocks), 2 × 1.05 GB (unseen text, batch 4) | the LM head runs on 128 MiB of positions at a time, its weight converted 64 MiB of rows at a time |
| export | the fp32 embedding and LM head together in one 2 GiB shard, and `save_file`'s bytes copy of that shard | 2.1 + 2.1 GB | each tensor written as it comes, 64 MiB converted at a time |
| database | the fp32 copy; during the solve of a layer, the Hessian sums kept beside their dampened copy, the whole layer converted, and `save_file`'s copy of the levels | 3.56 + 0.27 + 0.24 + 0.4 GB | mapped; sums dampened in place; only the solved projection converted; levels streamed to the file |
"""
WIDE_NOTES = (
    "Commands: `evoprune prune --method uniform --sparsity 0.5 data.calibration_blocks=4 data.eval_blocks=2` (with "
    "eval.unseen_blocks=2 eval.repeats=1 eval.warmup=1: fewer batches of the same size) and `evoprune database "
    "--sparsity 0.5 data.calibration_blocks=4 database.store=run`, each without a budget and with `--max-memory 2`. "
    "Under the budget both took the mapped path and stayed under 2 GiB of peak anonymous memory (whole process, "
    "Python and torch included), with the unbounded runs' results: the exported shards and spec.json byte for byte, "
    "the dense and pruned perplexity and KL equal as floats, the six database layer files byte for byte "
    "(`tests/weights/test_bounded_load.py` checks the same on a tiny model). Without a budget the copy is kept "
    "(it fits half of MemAvailable here). The 2026-12-08 runs: four at once on a loaded machine; the unbounded "
    "database run started before two database changes that do not change its values (Hessian sums dampened in "
    "place, only the solved projection converted), so its measured peak is slightly above what the code now needs; "
    "the bounded database run was started by hand with the same command and tabulated with `--reuse`.")
WIDE_MEMORY = {"prune": "metrics.json", "database": "database_memory.json"}  # where each run writes its memory
# An export reloaded by stock transformers in a fresh process (no evoprune): layers, logits shape, MLP widths.
RELOAD_CHECK = ("import sys, torch; from transformers import AutoModelForCausalLM as M; "
                "m = M.from_pretrained(sys.argv[1], trust_remote_code=True); "
                "n = len(m.model.layers); ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]); "
                "out = m(ids).logits; assert torch.isfinite(out.float()).all(); "
                "print(n, tuple(out.shape), [tuple(l.mlp.down_proj.weight.shape) for l in m.model.layers if l.mlp][:2])")
WIDE_COLUMNS = ["command", "budget", "dense model", "stage", "estimate GiB", "measured GiB", "ratio"]


class Sampled:
    """Run a command; sample its /proc/PID/status until it ends (or `stop()` says so)."""

    def __init__(self, cmd: list[str], env: dict, log: Path, stop=None, interval: float = 0.1):
        self.peak_rss = self.peak_anon = 0
        started = time.time()
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            sampler = threading.Thread(target=self._sample, args=(proc, interval), daemon=True)
            sampler.start()
            while proc.poll() is None:
                if stop is not None and stop():
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait()
                    break
                time.sleep(1.0)
            sampler.join()
        self.seconds = time.time() - started
        self.returncode = proc.returncode
        if self.returncode not in (0, -signal.SIGTERM) and not (stop and stop()):
            raise SystemExit(f"{' '.join(cmd[:4])}... failed ({self.returncode}); see {log}")

    def _sample(self, proc: subprocess.Popen, interval: float) -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                self.peak_rss = max(self.peak_rss, int(fields["VmRSS"].split()[0]) * 1024)
                self.peak_anon = max(self.peak_anon, int(fields["RssAnon"].split()[0]) * 1024)
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(interval)

    def row(self, case: str, step: str) -> dict:
        return {"case": case, "step": step, "stage": "whole step", "seconds": round(self.seconds, 1),
                "peak RSS GiB": round(self.peak_rss / GIB, 2), "peak anon GiB": round(self.peak_anon / GIB, 2)}


def stage_rows(case: str, step: str, metrics: Path) -> list[dict]:
    """The run's own per-stage figures (metrics.json "memory")."""
    if not metrics.is_file():
        return []
    memory = json.loads(metrics.read_text()).get("memory") or {}
    return [{"case": case, "step": step, "stage": s["stage"], "seconds": round(s["seconds"], 1),
             "peak RSS GiB": round((s["peak_rss_bytes"] or 0) / GIB, 2),
             "peak anon GiB": round((s["peak_anon_bytes"] or 0) / GIB, 2)} for s in memory.get("stages", [])]


def evoprune(*args: str) -> list[str]:
    return [sys.executable, "-m", "evoprune.cli", *args, "--quiet"]


def checkpoint(case: str, config: dict, work: Path, env: dict, rows: list[dict]) -> Path:
    script = ("import sys, json; from pathlib import Path; from evoprune.weights.random_checkpoint import "
              "cached_random_checkpoint as c; print(c(sys.argv[1], json.loads(sys.argv[2]), "
              "tokenizer_from=Path(sys.argv[3])))")
    log = work / f"{case}-checkpoint.log"
    step = Sampled([sys.executable, "-c", script, case, json.dumps(config), str(embedded_model_dir())], env, log)
    rows.append(step.row(case, "write random checkpoint"))
    return Path(log.read_text().strip().splitlines()[-1])


def run_1b(model: Path, work: Path, env: dict, rows: list[dict], args) -> None:
    out = work / "1b-darwin"
    cmd = evoprune("darwin", "--model", str(model), "--sparsity", "0.5", "--profile", "mip", "--out", str(out),
                   "--force", *SMALL, "data.calibration_blocks=16", "data.eval_blocks=4", "eval.unseen_blocks=1",
                   "search.fitness_pool=8", "search.fitness_tokens=[256,512,1024]",
                   f"search.replace_one_tokens={args.replace_one_tokens}")
    step = Sampled(cmd, env, work / "1b-darwin.log")
    rows += [step.row("1b", "darwin quick"), *stage_rows("1b", "darwin quick", out / "metrics.json")]


def run_8b_database(model: Path, work: Path, env: dict, rows: list[dict], args) -> None:
    out = work / "8b-database"
    db = out / "database"
    done = lambda: len(list(db.glob("layer_*.safetensors"))) >= args.database_layers  # noqa: E731
    cmd = evoprune("database", "--model", str(model), "--sparsity", "0.5", "--out", str(out), "--force", *SMALL,
                   "data.calibration_blocks=8")
    step = Sampled(cmd, env, work / "8b-database.log", stop=done)
    times = sorted(p.stat().st_mtime for p in db.glob("layer_*.safetensors"))
    per_layer = [b - a for a, b in zip(times, times[1:])]
    row = step.row("8b-database", f"database, first {len(times)} of 32 layers")
    rows.append(row)
    if per_layer:
        mean = sum(per_layer) / len(per_layer)
        before_first = row["seconds"] - (times[-1] - times[0]) - mean
        rows.append({"case": "8b-database", "step": "database, extrapolated to 32 layers",
                     "stage": f"{mean:.0f} s per layer after the first", "seconds": round(before_first + 32 * mean),
                     "peak RSS GiB": "", "peak anon GiB": ""})


def run_8b_wide4(model: Path, work: Path, env: dict, rows: list[dict], args) -> None:
    out = work / "8b-wide4"
    tiny = ["search.generations=2", "search.offspring=4", "search.fitness_tokens=[256,512]", "search.survivors=[2,1]",
            "search.train_tokens=[0,0]", "search.fitness_pool=4", "search.first_parent=uniform",
            "data.eval_blocks=2", "eval.unseen_blocks=1"]
    common = ["--model", str(model), "--sparsity", "0.5", "--out", str(out), *SMALL, "data.calibration_blocks=8",
              *tiny]
    step = Sampled(evoprune("database", *common, "--force"), env, work / "8b-wide4-database.log")
    rows.append(step.row("8b-wide4", "evoprune database"))
    step = Sampled(evoprune("search", *common), env, work / "8b-wide4-search.log")
    rows += [step.row("8b-wide4", "evoprune search + export"),
             *stage_rows("8b-wide4", "evoprune search + export", out / "metrics.json")]
    log = work / "8b-wide4-reload.log"
    step = Sampled([sys.executable, "-c", RELOAD_CHECK, str(out / "model")], {**env, "PYTHONPATH": ""}, log)
    rows.append({**step.row("8b-wide4", "reload with stock transformers + forward"),
                 "stage": log.read_text().strip().splitlines()[-1][:120]})


def run_embedded(model: Path, work: Path, env: dict, rows: list[dict], args) -> None:
    """The main job before (`--before`, a commit; its src/ on PYTHONPATH) and after, side by side: both at
    once, each pinned to its own core with one thread, so drift in the machine's speed hits both alike."""
    tree = work / "before-tree"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before], check=True)
    sources = {"before": str(tree / "src"), "after": str(Path(__file__).resolve().parents[1] / "src")}

    def run(core: int, label: str) -> Sampled:
        out = work / f"embedded-{label}"
        cmd = ["taskset", "-c", str(core), *evoprune("darwin", "--model", "smollm2-135m", "--sparsity", "0.5",
                                                      "--profile", "mip", "--out", str(out), "--force")]
        pinned = {**env, "PYTHONPATH": sources[label], "OMP_NUM_THREADS": "1"}
        return Sampled(cmd, pinned, work / f"embedded-{label}.log")

    with ThreadPoolExecutor(max_workers=2) as pool:
        steps = dict(zip(sources, pool.map(run, range(2), sources)))
    genotypes, seconds = {}, {}
    for label, step in steps.items():
        out = work / f"embedded-{label}"
        metrics = json.loads((out / "metrics.json").read_text())
        genotypes[label] = json.loads((out / "spec.json").read_text())["meta"]["genotype"]
        seconds[label] = step.seconds
        rows.append({**step.row("embedded", f"darwin quick, {label} ({args.before if label == 'before' else 'HEAD'})"),
                     "stage": f"one core each, at once; search {metrics['search']['search_seconds']} s, held-out KL "
                              f"{metrics['pruned']['kl_to_teacher']:.4f}"})
    rows.append({"case": "embedded", "step": "after / before", "stage": "wall time ratio",
                 "seconds": round(seconds["after"] / seconds["before"], 3), "peak RSS GiB": "", "peak anon GiB": ""})
    rows.append({"case": "embedded", "step": "same genotype before and after",
                 "stage": str(genotypes["before"] == genotypes["after"]), "seconds": "", "peak RSS GiB": "",
                 "peak anon GiB": ""})


def own_cache(work: Path, name: str) -> Path:
    """A fresh evoprune cache sharing the unpacked assets and models of the user's (nothing computed is reused)."""
    from evoprune.assets import cache_dir

    cache = work / f"cache-{name}"
    if cache.exists():
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    cache.mkdir(parents=True)
    for shared in ("assets", "models"):
        if (cache_dir() / shared).exists():
            (cache / shared).symlink_to(cache_dir() / shared)
    return cache


def run_8b_uniform(model: Path, work: Path, env: dict, rows: list[dict], args) -> None:
    """A uniform prune of the full 8B shape with its export under `--max-memory` (20 GiB by default on this
    24 GiB machine), then the export reloaded by stock transformers in a fresh process."""
    out, budget = work / "8b-uniform", args.max_memory_8b
    cli = [*WIDE_COMMANDS["prune"], "model.dtype=bfloat16", "data.seq_len=256", "eval.unseen_blocks=1",
           "eval.latency=false"]
    step = Sampled(evoprune(*cli, "--model", str(model), "--out", str(out), "--force", "--max-memory", str(budget)),
                   {**env, "EVOPRUNE_CACHE": str(own_cache(work, "8b-uniform"))}, work / "8b-uniform.log")
    rows += [step.row("8b-uniform", f"prune uniform 0.5 + export, --max-memory {budget}"),
             *stage_rows("8b-uniform", "prune uniform 0.5 + export", out / "metrics.json")]
    log = work / "8b-uniform-reload.log"
    step = Sampled([sys.executable, "-c", RELOAD_CHECK, str(out / "model")], {**env, "PYTHONPATH": ""}, log)
    rows.append({**step.row("8b-uniform", "reload with stock transformers + forward"),
                 "stage": log.read_text().strip().splitlines()[-1][:120]})
    write_json(Path(args.out) / "scale_rows" / "8b-uniform-stages.json",
               estimate_rows("prune", cli, budget, out / "metrics.json", model, "mapped as stored (bf16)"))


def estimate_rows(command: str, cli: list[str], budget: float | None, memory_file: Path, model: Path,
                  unbounded_label: str = "copied in fp32") -> list[dict]:
    """Each stage's estimate (`memory_plan.plan_estimates`, for the path the run took) beside its measured peak
    anonymous memory above the process's own at the start, and the whole process's peak."""
    from evoprune.config import load_config
    from evoprune.memory_plan import plan_estimates

    memory = json.loads(memory_file.read_text())
    if command == "prune":
        memory = memory["memory"]
    overrides = [a for a in cli if "=" in a] + [f"model.source={model}", "prune.sparsity=0.5"]
    if budget is not None:
        overrides.append(f"max_memory_gib={budget}")
    _, copied, bounded = plan_estimates(load_config(None, overrides), command)
    kept = memory.get("bounded")
    estimates = bounded if kept else copied
    base = memory["start_anon_bytes"]
    label = {"command": command, "budget": f"{budget} GiB" if budget else "none",
             "dense model": "mapped (bounded)" if kept else unbounded_label}
    rows = []
    for stage in memory["stages"]:
        if stage["stage"] not in estimates:
            continue
        measured = stage["peak_anon_bytes"] - base
        rows.append({**label, "stage": stage["stage"], "estimate GiB": round(estimates[stage["stage"]] / GIB, 2),
                     "measured GiB": round(measured / GIB, 2),
                     "ratio": round(estimates[stage["stage"]] / measured, 2) if measured > 0 else ""})
    rows.append({**label, "dense model": "whole process",
                 "stage": f"peak anonymous, absolute (at the start: {base / GIB:.2f})",
                 "estimate GiB": "", "measured GiB": round(memory["peak_anon_bytes"] / GIB, 2), "ratio": ""})
    return rows


def run_wide(model: Path, work: Path, env: dict, rows: list[dict], args) -> None:
    runs = [(command, cli, budget) for command, cli in WIDE_COMMANDS.items() for budget in (None, args.max_memory)]

    def start(run):
        command, cli, budget = run
        label = f"wide-{command}-{budget or 'unbounded'}"
        if args.reuse and (work / label / WIDE_MEMORY[command]).is_file():
            return None
        flags = [] if budget is None else ["--max-memory", str(budget)]
        return Sampled(evoprune(*cli, "--model", str(model), "--out", str(work / label), "--force", *flags),
                       {**env, "EVOPRUNE_CACHE": str(own_cache(work, label))}, work / f"{label}.log")

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # a run's memory is its own: measured alike
        steps = list(pool.map(start, runs))
    wide_rows = []
    for (command, cli, budget), step in zip(runs, steps):
        out = work / f"wide-{command}-{budget or 'unbounded'}"
        if step is not None:
            rows.append(step.row("wide", f"{command}, {'--max-memory ' + str(budget) if budget else 'unbounded'}"))
        wide_rows += estimate_rows(command, cli, budget, out / WIDE_MEMORY[command], model)
    write_json(Path(args.out) / "scale_rows" / "wide-stages.json", wide_rows)


RUNNERS = {"1b": run_1b, "8b-database": run_8b_database, "8b-wide4": run_8b_wide4, "embedded": run_embedded,
           "wide": run_wide, "8b-uniform": run_8b_uniform}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--database-layers", type=int, default=2, help="8b-database: layers to build before stopping")
    ap.add_argument("--replace-one-tokens", type=int, default=512, help="1b: tokens of the replace-one scores")
    ap.add_argument("--before", default="1d151f3", help="embedded: the commit before the memory-bounded chain")
    ap.add_argument("--max-memory", type=float, default=2.0, help="wide: the budget of the bounded runs (GiB)")
    ap.add_argument("--max-memory-8b", type=float, default=20.0, help="8b-uniform: its budget (GiB)")
    ap.add_argument("--parallel", type=int, default=1, help="wide: runs at once (memory is per process)")
    ap.add_argument("--reuse", action="store_true", help="wide: tabulate a finished run found in --work, not rerun it")
    ap.add_argument("--work", default="results/tmp/scale")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        raise SystemExit(f"unknown case in {args.cases!r}; choose from {', '.join(CASES)}")
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for case in cases:
        rows: list[dict] = []
        model = checkpoint(case, CASES[case][1], work, env, rows) if CASES[case][1] else None
        RUNNERS[case](model, work, env, rows, args)
        write_json(out / "scale_rows" / f"{case}.json", rows)
    all_rows = [r for case in CASES if (out / "scale_rows" / f"{case}.json").is_file()
                for r in json.loads((out / "scale_rows" / f"{case}.json").read_text())]
    lines = ["# Scale: time and peak memory per stage", "",
             f"`python bench/scale.py` on this machine ({os.cpu_count()} cores); random-init bf16 checkpoints "
             "with the real configs, computed in fp32 one layer at a time.", "",
             markdown_table(all_rows, COLUMNS)]
    stages = out / "scale_rows" / "wide-stages.json"
    if stages.is_file():
        lines += ["", "## Wide 0.89B shape: estimate and measured peak per stage", "",
                  "Hidden 2048, MLP 8192, 6 layers, vocabulary 128,256, untied, bf16 (`model.dtype` float32, the "
                  "default). Measured: the stage's peak anonymous memory (sampled every 25 ms by `evoprune.memory`) "
                  "minus the process's own when the run started (Python, torch, tokenizer); estimate: "
                  "`memory_plan.plan_estimates`, the formulas of docs/memory.md for the path the run took. "
                  "`--max-memory` compares estimate + the process's own with the budget.", "",
                  markdown_table(json.loads(stages.read_text()), WIDE_COLUMNS), "", WIDE_NOTES, "",
                  "What held the memory before:", "", WIDE_HOLDERS]
    stages = out / "scale_rows" / "8b-uniform-stages.json"
    if stages.is_file():
        lines += ["", "## Llama-3.1-8B shape: uniform prune and export under --max-memory", "",
                  "32 layers, hidden 4096, MLP 14336, vocabulary 128,256, bf16 on disk (16 GB), computed in fp32; "
                  "`prune --method uniform --sparsity 0.5` with its evaluation and export, then the export "
                  "reloaded by stock transformers (rows `8b-uniform` above). `model.dtype=bfloat16`: kept and exported as stored (9 GB), not widened to a 32 GB fp32 copy; `eval.latency=false`: the mapped bf16 weights are converted to fp32 at every call, so a timing would measure the conversion (and thrash the page cache at this size). Columns as in the wide table.", "",
                  markdown_table(json.loads(stages.read_text()), WIDE_COLUMNS)]
    write_text(out / "scale.md", "\n".join(lines) + "\n")
    print((out / "scale.md").read_text())


if __name__ == "__main__":
    main()
