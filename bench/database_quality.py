"""How the second-order database's settings change quality on unseen text, at its uniform genotype.

    python bench/database_quality.py                      # every setting below, 50% and 25%
    python bench/database_quality.py --settings damp-0.1,damp-1 --threads 1

The uniform genotype (every module at the level nearest the target) isolates the database from
the search: the same shape, pruned with other calibration data, dampening, level spacing or
attention units. Judged like bench/darwin_unseen.py (unseen domains, held-back Austen, embedded
held-out split). Rows merge across invocations (results/database_quality_rows/).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import astuple
import sys
from pathlib import Path

import torch

from darwin_unseen import Judge, database_key
from evoprune.darwinlm import pipeline as darwin
from evoprune.atomic import write_json, write_text
from evoprune.cli import parse_with_overrides
from evoprune.config import load_config
from evoprune.models import load_source
from evoprune.arch.target import resolve_target
from evoprune.report import markdown_table
from evoprune.levels.budget import make_budget, uniform_genotype

SETTINGS = {
    "default": [],
    "damp-0.1": ["database.percdamp=0.1"],
    "damp-1": ["database.percdamp=1.0"],
    "calibration-128": ["data.calibration_blocks=128"],
    "calibration-8": ["data.calibration_blocks=8"],
    "query-heads": ["database.attention_units=query_heads"],
    "boolq-64": ["data.source=embedded:boolq", "data.calibration_blocks=64"],
    "boolq-64-query-heads": ["data.source=embedded:boolq", "data.calibration_blocks=64",
                             "database.attention_units=query_heads"],
    "flops-spacing": ["database.spacing=flops"],
    "activation": ["database.method=activation"],
    "storage-bf16": ["database.storage_dtype=bfloat16"],
}
COLUMNS = ["sparsity", "setting", "unseen ppl", "news", "howto", "math", "austen (held back)",
           "held-out ppl", "KL"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--eval-blocks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default="results/tmp/darwin_unseen")
    ap.add_argument("--out", default="results")
    args = parse_with_overrides(ap, argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    if not names or any(n not in SETTINGS for n in names):
        ap.error(f"--settings takes a comma list of {', '.join(SETTINGS)}, got {args.settings!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_config(None, [f"data.eval_blocks={args.eval_blocks}", *args.overrides])
    dense = load_source(base)
    shape = dense.adapter.shape(dense.model)
    judge = Judge(base, dense)
    out = Path(args.out)
    for name in names:
        cfg = load_config(None, [f"data.eval_blocks={args.eval_blocks}", *args.overrides, *SETTINGS[name]])
        path = Path(args.work) / f"database-{database_key(cfg)}-{cfg.database.spacing}-{cfg.database.method}"
        db = darwin.build_database(cfg, dense, path)
        table = darwin.cost_table(db, "params")
        for sparsity in args.sparsities:
            budget = make_budget(table, resolve_target(shape, sparsity=sparsity).block_params)
            row = {"sparsity": sparsity, "setting": name, "overrides": SETTINGS[name],
                   **judge(dense.adapter.slice(dense.model, *db.stitch(
                       *map(list, astuple(uniform_genotype(table, budget))), dense.adapter)))}
            save_row(out, row)
            print(row, flush=True)
    write_report(out, argv)


def save_row(out: Path, row: dict) -> None:
    write_json(out / "database_quality_rows" / f"{row['sparsity']:g}-{row['setting']}.json", row)


def write_report(out: Path, argv: list[str]) -> None:
    rows = [json.loads(p.read_text()) for p in (out / "database_quality_rows").glob("*.json")]
    rows.sort(key=lambda r: (-r["sparsity"], list(SETTINGS).index(r["setting"])))
    write_json(out / "database_quality.json", {"rows": rows})
    text = ("# Database settings, judged at the uniform genotype on unseen text\n\n"
            f"Command of the last run: `python bench/database_quality.py {' '.join(argv)}` (rows of other "
            "settings come from earlier runs).\n\nSettings:\n\n" +
            "".join(f"- `{k}`: {' '.join(v) or 'the defaults'}\n" for k, v in SETTINGS.items()) + "\n" +
            markdown_table(rows, COLUMNS))
    write_text(out / "database_quality.md", text)
    print(text)


if __name__ == "__main__":
    main()
