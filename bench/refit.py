"""What the sequential re-fit adds to a darwin run's model: every re-fit target beside the database's weights.

    python bench/refit.py --run runs/darwin-50                 # results/refit.{md,json}
    python bench/refit.py --run runs/family/sparsity-0.25 --out /tmp/refit-25 --targets self,dense

The run's chosen genotype is stitched from its database again, then re-fitted (`obs/refit.py`) with each
target on the run's calibration blocks, and every variant is measured in one evaluation: KL to the dense
model and perplexity on the held-out split, the *dev* text (news, how-to, math: the genres settings
are chosen on) and the *test* text (Austen's novels and the Debian Policy Manual: nothing is chosen on
them; `heldback_perplexity` is Austen alone, `test_ppl_mean` the geometric mean of both). Decide on
dev; read test. Re-fit seconds are measured in this call (noisy machine: the load average is kept).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from evoprune.atomic import write_json, write_text
from evoprune.darwinlm.chosen import evaluate_beside, stitched_run, refit_chosen
from evoprune.report import markdown_table
from evoprune.weights.compute_dtype import inference_slice

COLUMNS = ["weights", "kl_to_teacher", "perplexity", "perplexity_ci95", "unseen_ppl_mean", "unseen_ppl_mean_ci95",
           "heldback_perplexity", "test_ppl_mean", "test_ppl_mean_ci95", "refit_seconds", "mean_error_before",
           "mean_error_after"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished darwin run (or one size of a family)")
    p.add_argument("--targets", default="self,dense,residual")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "refit")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. refit.percdamp=0.1")
    a = p.parse_args()
    cfg, dense, spec, replace = stitched_run(a.run, a.overrides)
    models = {"dense": dense.model, "database (one-shot OBS)": inference_slice(dense.model, dense.adapter, spec, replace)}
    records: dict[str, dict] = {}
    for target in [t for t in a.targets.split(",") if t]:
        cfg.refit.target = target
        pruned = inference_slice(dense.model, dense.adapter, spec, replace)
        load = os.getloadavg()[0]
        pruned, _, record = refit_chosen(cfg, dense, spec, pruned, progress=True)
        record["load_before"] = round(load, 2)
        models[f"re-fit: {target}"], records[f"re-fit: {target}"] = pruned, record
    started = time.time()
    rows = evaluate_beside(cfg, dense, models)
    table = []
    for name, row in rows.items():
        record = records.get(name, {})
        table.append({"weights": name, **{c: row.get(c) for c in COLUMNS[1:9]},
                      "refit_seconds": record.get("seconds"), "mean_error_before": record.get("mean_error_before"),
                      "mean_error_after": record.get("mean_error_after")})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), {"run": str(a.run), "overrides": a.overrides, "rows": table,
                                            "refit": records, "evaluation_seconds": round(time.time() - started)})
    lines = [f"# Sequential re-fit of `{a.run}`", "",
             f"{spec.num_params() / 1e6:.1f}M parameters, {spec.block_sparsity():.1%} of block parameters removed; "
             f"re-fit on {cfg.data.calibration_blocks} calibration blocks of {cfg.data.seq_len} tokens "
             f"(refit.percdamp={cfg.refit.percdamp}). *Dev*: unseen_ppl_mean (news, how-to, math). *Test*: "
             f"heldback_perplexity (Austen) and test_ppl_mean (Austen and the Debian Policy Manual). Errors are per-module relative squared errors to the target.", "",
             markdown_table(table, COLUMNS), ""]
    write_text(a.out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
