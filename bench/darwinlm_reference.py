"""DarwinLM's own code as the reference (issue 28, item 5): its database and its search, on CPU, beside evoprune.

    python bench/darwinlm_reference.py --darwinlm-repo /tmp/darwinlm-src --generations 56 \\
        --evoprune-run runs/darwin-50                 # results/darwinlm_reference.{md,json}

The checkout is imported, not copied (`darwinlm_adapter.py` says what is replaced for the CPU). Steps, each
kept in --work and reused when it is complete:
1. DarwinLM's structured OBS database (`src/struct_pruner.py`, `src/fast_obc_struct.py`: query heads of
   o_proj and neurons of down_proj, its 1% dampening) on evoprune's calibration blocks (`data_blocks(cfg, tok,
   "calibration", n)`), with the level lists of `darwinlm_levels.level_lists`.
2. DarwinLM's evolutionary search (`evo_struct_prune_search.py`) from its uniform level with its script's
   settings (16 offspring, 8/4/2/1 survivors on 1,024/2,048/4,096/8,192 tokens, KL fitness), no training in
   selection, for --generations generations; its fitness pool is the same calibration blocks (as its own
   search draws from the start of its database's FineWeb-Edu sample).
3. Its uniform start and its final configuration are turned into SubnetSpecs (`darwinlm_levels.py`) and
   measured with evoprune's evaluation (`chosen.evaluate_beside`) beside the dense model and an evoprune
   darwin run (--evoprune-run, or `evoprune darwin --profile mip` run into --work).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import darwinlm_levels  # noqa: E402
from evoprune.atomic import write_json, write_text  # noqa: E402
from evoprune.config import load_config  # noqa: E402
from evoprune.darwinlm.chosen import evaluate_beside, stitched_run  # noqa: E402
from evoprune.data import data_blocks  # noqa: E402
from evoprune.models import load_source  # noqa: E402
from evoprune.report import markdown_table  # noqa: E402
from evoprune.weights.compute_dtype import inference_slice  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "generations", "search_minutes", "block_sparsity", "kl_to_teacher", "perplexity",
           "unseen_ppl_mean", "heldback_perplexity", "test_ppl_mean", "test_ppl_mean_ci95"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--darwinlm-repo", type=Path, required=True, help="a checkout of IST-DASLab/DarwinLM (3596da3)")
    p.add_argument("--darwinlm-commit", default="3596da3",
                   help="recorded when the checkout is not a git work tree (e.g. from git archive)")
    p.add_argument("--work", type=Path, default=Path("/tmp/darwinlm-reference"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "darwinlm_reference")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--generations", type=int, default=56)
    p.add_argument("--calibration-blocks", type=int, default=32, help="database and fitness pool (evoprune: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offspring", type=int, default=16, help="DarwinLM's script: 16")
    p.add_argument("--survivors", type=int, nargs="+", default=[8, 4, 2, 1], help="per stage (script: 8 4 2 1)")
    p.add_argument("--fitness-tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                   help="per stage (script: 1024 2048 4096 8192); the pool must hold the largest")
    p.add_argument("--evoprune-run", type=Path, help="a finished evoprune darwin run; default: run the mip profile")
    p.add_argument("--multiple", type=int, default=32, help="MLP widths of the level lists (DarwinLM: 32)")
    p.add_argument("--no-evoprune", action="store_true", help="no evoprune row (no --evoprune-run, none run)")
    p.add_argument("--until", choices=["database", "search", "evaluate"], default="evaluate",
                   help="stop after this step (each step is kept in --work and reused)")
    p.add_argument("--smoke", action="store_true", help="mark the results as a reduced smoke-scale run")
    p.add_argument("overrides", nargs="*", help="evaluation config overrides, e.g. data.eval_blocks=16")
    a = p.parse_args()
    import darwinlm_adapter

    a.work.mkdir(parents=True, exist_ok=True)
    overrides = ["eval.latency=false", *a.overrides]
    run = a.evoprune_run
    if run is None and a.until == "evaluate" and not a.no_evoprune:
        run = _evoprune_mip(a.work / "evoprune-mip", a.sparsity)
    cfg = load_config(run / "config.yaml" if run else None, overrides)
    dense = load_source(cfg)
    shape = dense.adapter.shape(dense.model)
    cols_attention, cols_mlp, target = darwinlm_levels.level_lists(shape, a.sparsity, a.multiple)
    blocks = data_blocks(cfg, dense.tokenizer, "calibration", a.calibration_blocks)

    database = a.work / f"database-{a.calibration_blocks}"
    if not (database / "complete").is_file():
        darwinlm_adapter.build_database(a.darwinlm_repo, dense.path, blocks, database, cols_attention, cols_mlp)
    database_seconds = float((database / "complete").read_text())
    if a.until == "database":
        return

    stages = "-".join(f"{n}x{t}" for n, t in zip(a.survivors, a.fitness_tokens))
    search_dir = a.work / f"search-{a.calibration_blocks}-g{a.generations}-s{a.seed}-o{a.offspring}-{stages}"
    record_path = search_dir / "record.json"
    if not record_path.is_file():
        record = darwinlm_adapter.run_search(a.darwinlm_repo, dense.path, database, search_dir,
                                             darwinlm_adapter.BlockData(blocks), a.generations, target,
                                             offspring=a.offspring, seed=a.seed, survivors=a.survivors,
                                             fitness_tokens=a.fitness_tokens)
        write_json(record_path, {"seconds": record.seconds, "selection_seconds": record.selection_seconds,
                                 "configuration": str(record.configuration), "stages": record.stages})
    search = json.loads(record_path.read_text())
    if a.until == "search":
        return

    genotypes = {f"DarwinLM code: uniform start (level {target})": (
                     darwinlm_levels.uniform_levels(len(shape.layers), target), 0, 0.0),
                 f"DarwinLM code: after {a.generations} generations": (
                     darwinlm_levels.read_level_file(search["configuration"]), a.generations, search["seconds"])}
    models = {"dense": dense.model}
    rows_meta = {"dense": {"generations": None, "search_minutes": None, "block_sparsity": 0.0}}
    counts = {}
    for name, (levels, generations, seconds) in genotypes.items():
        spec, replace, counts[name] = darwinlm_levels.spec_from_levels(shape, database, levels, {"method": name})
        models[name] = inference_slice(dense.model, dense.adapter, spec, replace)
        rows_meta[name] = {"generations": generations, "search_minutes": round(seconds / 60, 2),
                           "block_sparsity": round(counts[name]["darwinlm_block_sparsity"], 4)}
    if run is not None:
        _, _, spec, replace = stitched_run(run, overrides)
        name = f"evoprune {spec.meta.get('profile', 'darwin')} ({run.name})"
        models[name] = inference_slice(dense.model, dense.adapter, spec, replace)
        rows_meta[name] = {"generations": spec.meta.get("generations"), "search_minutes": _run_minutes(run),
                           "block_sparsity": round(spec.block_sparsity(), 4)}
    started = time.time()
    rows = evaluate_beside(cfg, dense, models)
    table = [{"method": n, **rows_meta[n], **{c: r.get(c) for c in COLUMNS[4:]}} for n, r in rows.items()]
    settings = {"darwinlm_repo": str(a.darwinlm_repo), "commit": _commit(a.darwinlm_repo) or f"{a.darwinlm_commit} (as given)", "sparsity": a.sparsity,
                "generations": a.generations, "calibration_blocks": a.calibration_blocks, "seq_len": cfg.data.seq_len,
                "seed": a.seed, "offspring": a.offspring, "survivors": a.survivors,
                "fitness_tokens": a.fitness_tokens, "cols_removed_attn": cols_attention, "cols_removed_mlp": cols_mlp,
                "target_level": target, "evoprune_run": None if run is None else str(run), "overrides": overrides, "smoke": a.smoke,
                "database_seconds": round(database_seconds, 1), "load_average": os.getloadavg()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), {"settings": settings, "rows": table, "counts": counts, "search": search,
                                            "evaluation_seconds": round(time.time() - started)})
    _write_page(a.out.with_suffix(".md"), table, settings)


def _write_page(path: Path, table: list[dict], settings: dict) -> None:
    """The table and its settings between the page's `<!-- table -->` markers (prose around them is kept), or a
    new page."""
    scale = "**Smoke-scale run** (reduced settings, see below): not a measurement to cite." if settings["smoke"] else ""
    block = "\n".join(["<!-- table -->", scale, "", markdown_table(table, COLUMNS), "",
                       "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()), "<!-- /table -->"])
    text = path.read_text() if path.is_file() else "# DarwinLM's own code beside evoprune\n\n<!-- table -->\n<!-- /table -->\n"
    head, _, rest = text.partition("<!-- table -->")
    _, _, tail = rest.partition("<!-- /table -->")
    write_text(path, head + block + tail)
    print(block)


def _evoprune_mip(out: Path, sparsity: float) -> Path:
    """`evoprune darwin --profile mip` (the default) run into `out`, unless it finished there before."""
    if not (out / "spec.json").is_file():
        subprocess.run([sys.executable, "-m", "evoprune.cli", "darwin", "--profile", "mip", "--sparsity", str(sparsity),
                        "--out", str(out), "--quiet", "--force"], check=True)
    return out


def _run_minutes(run: Path) -> float | None:
    try:
        seconds = json.loads((run / "metrics.json").read_text())["search"]["search_seconds"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return None if seconds is None else round(seconds / 60, 1)


def _commit(repo: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
