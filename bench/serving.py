"""The 50% DarwinLM model against the dense one where it would be served: transformers and llama.cpp.

    python bench/serving.py --pruned results/tmp/scale/embedded-before/model   # an existing 50% darwin run
    python bench/serving.py          # runs `evoprune darwin --profile mip --sparsity 0.5` first (about 17 min),
                                     # into --work, resumed if it is there
    python bench/serving.py --quants f16 --eval-blocks 4 data.seq_len=256      # key=value words: config overrides

Dense and pruned models are measured side by side in each engine and format: transformers (fp32,
`evaluate.run.evaluate`), llama.cpp f16, q8_0 and q4_k_m (`evoprune export --format gguf`, then
`evoprune eval --engine llamacpp`). Every row has held-out perplexity on the same token ids, file
size, prefill and decode tokens/s at batch 1 (models interleaved repeat by repeat) and speedups
against the dense model in the same engine and format. Two goals are checked: in llama.cpp the
pruned model's decode speedup is at least 0.9x its ideal speedup (dense / pruned parameters), and
llama.cpp f16 perplexity is within 0.5% of transformers'. For the quantized formats, the same files
are also timed with llama.cpp's weight repacking on and off, four models interleaved in one engine
process (`--repack-compare`, on by default): evoprune turns repacking off on CPUs with AMX, where it
crashes (docs/serving.md), and this says what that costs where both work. Writes results/serving.md
and .json (`--name`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from evoprune.atomic import write_json, write_text
from evoprune.cli import parse_with_overrides
from evoprune.config import load_config
from evoprune.report import markdown_table

QUANTS = ("f16", "q8_0", "q4_k_m")
DECODE_GOAL = 0.9  # llama.cpp decode speedup >= this x the ideal speedup (dense / pruned parameters)
PERPLEXITY_GOAL = 0.005  # llama.cpp f16 perplexity within this fraction of transformers'
COLUMNS = ["engine", "format", "model", "perplexity", "file_mb", "params", "prefill_tokens_per_s",
           "decode_tokens_per_s", "prefill_speedup", "decode_speedup", "params_ratio", "ideal_speedup"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Trailing key=value words are config overrides (e.g. data.seq_len=256).")
    ap.add_argument("--dense", default="smollm2-135m", help="the dense model (HF folder or smollm2-135m)")
    ap.add_argument("--pruned", help="HF folder of the pruned model (a run's model/); default: a darwin run in --work")
    ap.add_argument("--sparsity", type=float, default=0.5, help="of the darwin run made without --pruned")
    ap.add_argument("--quants", nargs="+", default=list(QUANTS), choices=QUANTS)
    ap.add_argument("--eval-blocks", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="for torch and llama.cpp alike (default: torch's threads)")
    ap.add_argument("--work", default="results/tmp/serving", help="GGUF files and eval runs (kept for inspection)")
    ap.add_argument("--out", default="results")
    ap.add_argument("--name", default="serving", help="file names in --out: NAME.md and NAME.json")
    ap.add_argument("--no-repack-compare", dest="repack_compare", action="store_false",
                    help="skip timing the quantized files with llama.cpp's weight repacking on and off")
    args = parse_with_overrides(ap, argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    cfg = load_config(None, args.overrides, base={"model.source": args.dense, "data.eval_blocks": args.eval_blocks,
                                                  "eval.repeats": args.repeats, "eval.unseen": False,
                                                  "eval.threads": threads})
    work = Path(args.work)
    started = time.time()
    pruned = Path(args.pruned) if args.pruned else darwin_model(cfg, args.sparsity, work)
    results = measure(cfg, args.dense, pruned, args.quants, work)
    repack = repack_rows(repack_speeds(cfg, results["files"], threads)) if args.repack_compare else []
    rows = serving_rows(results["transformers"], results["gguf"], results["sizes"])
    checks = goal_checks(rows)
    setup = (f"dense {args.dense}, pruned {pruned}; {cfg.data.eval_blocks} held-out blocks of {cfg.data.seq_len} "
             f"tokens ({cfg.data.source}); batch 1, prompt {cfg.eval.prompt_len}, {cfg.eval.new_tokens} decode "
             f"steps, median of {cfg.eval.repeats} interleaved repeats; {platform.processor() or platform.machine()}, "
             f"{threads} threads for torch {torch.__version__} and llama.cpp (llama-cpp-python "
             f"{results['llama_cpp']}); {time.time() - started:.0f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{args.name}.json", {"setup": setup, "rows": rows, "checks": checks,
                                      "fallbacks": results["fallbacks"], "repack": repack})
    page = render(rows, checks, setup, "python bench/serving.py " + " ".join(argv), results["fallbacks"], repack)
    write_text(out / f"{args.name}.md", page)
    print(page)


def darwin_model(cfg, sparsity: float, work: Path) -> Path:
    """The model of a `darwin --profile mip` run at `sparsity` in `work`, run (or resumed) here."""
    from evoprune.darwinlm import pipeline as darwin

    run_cfg = load_config(None, [], base={"model.source": cfg.model.source, "prune.sparsity": sparsity,
                                          "prune.target_params": None, "search.profile": "mip"})
    run_cfg.data = cfg.data
    out = work / f"darwin-{sparsity:g}"
    if not (out / "model" / "config.json").is_file():
        darwin.run(run_cfg, out, phase="darwin")
    return out / "model"


def measure(cfg, dense: str, pruned: Path, quants: list[str], work: Path) -> dict:
    """Evaluate dense and pruned in transformers and, per quant, as GGUF files in llama.cpp."""
    import json

    from evoprune.models import resolve_model_path
    from evoprune.evaluation.run import evaluate
    from evoprune.serving.engine_eval import evaluate_gguf
    from evoprune.serving.engine_gguf import llama_cpp_version
    from evoprune.serving.gguf_export import export_gguf

    dense_dir = resolve_model_path(dense)
    tf = evaluate(cfg, str(pruned), work / "eval-transformers", teacher=str(dense_dir), force=True)
    results = {"transformers": json.loads((tf / "metrics.json").read_text()), "gguf": {}, "fallbacks": {}, "files": {},
               "sizes": {"dense": folder_bytes(dense_dir), "pruned": folder_bytes(pruned)},
               "llama_cpp": llama_cpp_version()}
    for quant in quants:
        files = {}
        for name, folder in (("dense", dense_dir), ("pruned", pruned)):
            exported = export_gguf(folder, work / "gguf" / f"{name}-{quant}", quant=quant, force=True)
            results["fallbacks"][f"{name} {quant}"] = exported.fallback_layers
            files[name] = exported.path
        results["files"][quant] = files
        run = evaluate_gguf(cfg, str(files["pruned"]), work / f"eval-{quant}", teacher=str(files["dense"]),
                            tokenizer=str(dense_dir), force=True)
        results["gguf"][quant] = json.loads((run / "metrics.json").read_text())
    return results


def repack_speeds(cfg, files: dict[str, dict[str, Path]], threads: int) -> dict[str, dict]:
    """Per quantized format: dense and pruned with repacking on and off, timed interleaved in one engine process.

    Returns:
        quant -> {"<model> repack on|off": EngineLatency as a dict}, or {"crashed": the one-line error} where
        repacking on crashes llama.cpp (CPUs with AMX).
    """
    from evoprune.serving.engine_process import EngineCrashed
    from evoprune.serving.engine_timing import measure_ggufs

    ev = cfg.eval
    speeds = {}
    for quant, by_model in files.items():
        if quant in ("f16", "f32"):
            continue
        paths = {f"{model} repack {state}": path for model, path in by_model.items() for state in ("on", "off")}
        repack = {name: name.rsplit(" ", 1)[1] for name in paths}
        try:
            measured = measure_ggufs(paths, ev.prompt_len, ev.new_tokens, ev.warmup, ev.repeats, threads, repack,
                                     seed=cfg.seed)
            speeds[quant] = {name: m.to_dict() for name, m in measured.items()}
        except EngineCrashed as crash:
            speeds[quant] = {"crashed": str(crash)}
    return speeds


def repack_rows(speeds: dict[str, dict]) -> list[dict]:
    """One row per format and model: prefill and decode tokens/s with repacking on and off, and off / on."""
    rows = []
    for quant, measured in speeds.items():
        if "crashed" in measured:
            rows.append({"format": quant, "model": "both", "note": "repacking on crashed: " + measured["crashed"]})
            continue
        for model in ("dense", "pruned"):
            on, off = measured[f"{model} repack on"], measured[f"{model} repack off"]
            rows.append({"format": quant, "model": model,
                         "decode_on": on["decode_tokens_per_s"], "decode_off": off["decode_tokens_per_s"],
                         "decode_off_over_on": off["decode_tokens_per_s"] / on["decode_tokens_per_s"],
                         "prefill_on": on["prefill_tokens_per_s"], "prefill_off": off["prefill_tokens_per_s"],
                         "prefill_off_over_on": off["prefill_tokens_per_s"] / on["prefill_tokens_per_s"]})
    return rows


def folder_bytes(folder: Path) -> int:
    """Bytes of the weight files (*.safetensors) in a model folder."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def serving_rows(transformers: dict, gguf: dict[str, dict], sizes: dict[str, int]) -> list[dict]:
    """One row per engine, format and model, dense first; speedups against dense in the same engine and format.

    Args:
        transformers: metrics.json of `evoprune eval` (rows "teacher" = dense and "model" = pruned).
        gguf: quant -> metrics.json of `evoprune eval --engine llamacpp` (same row names).
        sizes: "dense" / "pruned" -> bytes of the transformers weight files.
    """
    params = {"dense": transformers["teacher"]["params"], "pruned": transformers["model"]["params"]}
    runs = [("transformers", "fp32", transformers, {name: size / 2**20 for name, size in sizes.items()})]
    runs += [("llama.cpp", quant, m, {"dense": m["teacher"]["file_mb"], "pruned": m["model"]["file_mb"]})
             for quant, m in gguf.items()]
    rows = []
    for engine, fmt, metrics, mb in runs:
        for name, key in (("dense", "teacher"), ("pruned", "model")):
            r = metrics[key]
            rows.append({"engine": engine, "format": fmt, "model": name, "perplexity": r["perplexity"],
                         "file_mb": mb[name], "params": r["params"],
                         "prefill_tokens_per_s": r.get("prefill_tokens_per_s"),
                         "decode_tokens_per_s": r.get("decode_tokens_per_s"),
                         "prefill_speedup": r.get("prefill_speedup"), "decode_speedup": r.get("decode_speedup"),
                         "params_ratio": params[name] / params["dense"],
                         "ideal_speedup": params["dense"] / params[name]})
    return rows


def goal_checks(rows: list[dict]) -> list[dict]:
    """The two goals, one line per format or model: what was measured, the bound, and whether it holds."""
    by = {(r["engine"], r["format"], r["model"]): r for r in rows}
    checks = []
    for (engine, fmt, model), row in by.items():
        if engine == "llama.cpp" and model == "pruned" and row["decode_speedup"] is not None:
            bound = DECODE_GOAL * row["ideal_speedup"]
            checks.append({"goal": f"llama.cpp {fmt}: decode speedup >= {DECODE_GOAL} x ideal",
                           "measured": row["decode_speedup"], "bound": bound, "met": row["decode_speedup"] >= bound})
    for model in ("dense", "pruned"):
        tf, f16 = by.get(("transformers", "fp32", model)), by.get(("llama.cpp", "f16", model))
        if tf and f16:
            gap = abs(f16["perplexity"] / tf["perplexity"] - 1)
            checks.append({"goal": f"{model}: llama.cpp f16 perplexity within {PERPLEXITY_GOAL:.1%} of transformers",
                           "measured": gap, "bound": PERPLEXITY_GOAL, "met": gap <= PERPLEXITY_GOAL})
    return checks


def render(rows: list[dict], checks: list[dict], setup: str, command: str, fallbacks: dict | None = None,
           repack: list[dict] | None = None) -> str:
    """results/serving.md: setup, the table, the goals, what quantization could not cover, and repacking's cost."""
    goals = markdown_table([{**c, "met": "yes" if c["met"] else "**no**"} for c in checks],
                           ["goal", "measured", "bound", "met"])
    text = [f"# Serving: dense and pruned in transformers and llama.cpp\n\n{setup}\n\nCommand: `{command}`\n",
            "## Result\n\nSpeedups are against the dense model in the same engine and format; ideal speedup = dense "
            "/ pruned parameters (embeddings included).\n", markdown_table(rows, COLUMNS), "## Goals\n", goals]
    fell_back = {k: v for k, v in (fallbacks or {}).items() if v}
    if fell_back:
        text.append("## Quantization fallbacks\n\nLayers whose MLP width is not a multiple of the quantization "
                    "block keep some matrices in a larger type (`evoprune export` warns):\n\n"
                    + "\n".join(f"- {k}: layers {v}" for k, v in fell_back.items()) + "\n")
    if repack:
        columns = ["format", "model", "decode_on", "decode_off", "decode_off_over_on", "prefill_on", "prefill_off",
                   "prefill_off_over_on"]
        crashed, timed = [r for r in repack if "note" in r], [r for r in repack if "note" not in r]
        text.append("## Weight repacking\n\nThe same quantized files in llama.cpp with its weight repacking (extra "
                    "buffer types) on and off: tokens/s, four models interleaved repeat by repeat in one engine "
                    "process. evoprune turns repacking off only on CPUs with AMX, where llama.cpp's AMX backend "
                    "crashes on quantized GGUFs (`eval.repack`, docs/serving.md); elsewhere it stays on.\n\n"
                    + (markdown_table(timed, columns) if timed else "")
                    + "".join(f"\n- {r['format']}: {r['note']}" for r in crashed) + "\n")
    return "\n".join(text)


if __name__ == "__main__":
    main()
