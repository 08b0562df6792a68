"""What blockwise local distillation (Puzzle's BLD) adds to a darwin run's model, beside the re-fit.

    python bench/bld.py --run runs/darwin-50                   # results/bld.{md,json}
    python bench/bld.py --run runs/darwin-50 --variants database,bld:32768 bld.weights=outputs bld.lr=3e-4

The run's chosen genotype is stitched from its database again and every variant is built from those weights:
`database` (as stitched), `refit` (the sequential re-fit, target self), `bld:T` (BLD, T tokens per layer, with the
`bld` settings of the overrides) and `refit+bld:T` (BLD from the re-fitted weights). All are measured in one
evaluation: KL to the dense model and perplexity on the held-out split, the *dev* text (news, how-to, math: the
genres settings are chosen on) and the *test* text (the held-back Austen novels: nothing is chosen on them).
Decide on dev; read test. Seconds are the wall time of the re-fit and BLD in this call (the load average before
each is kept: on a shared machine they are not quiet timings).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from evoprune.atomic import write_json, write_text
from evoprune.darwinlm.chosen import evaluate_beside, stitched_run, distill_chosen, refit_chosen
from evoprune.report import markdown_table
from evoprune.weights.compute_dtype import inference_slice

COLUMNS = ["weights", "kl_to_teacher", "perplexity", "perplexity_ci95", "unseen_ppl_mean", "unseen_ppl_mean_ci95",
           "heldback_perplexity", "heldback_ci95", "refit_seconds", "bld_seconds", "bld_error_before",
           "bld_error_after"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished darwin run (or one size of a family)")
    p.add_argument("--variants", default="database,refit,bld:16384,bld:65536,refit+bld:65536")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "bld")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. bld.lr=3e-4 bld.weights=outputs")
    a = p.parse_args()
    cfg, dense, spec, stitched = stitched_run(a.run, a.overrides)
    models, records, refitted = {}, {}, None
    for variant in a.variants.split(","):
        record: dict = {}
        replace = stitched
        if variant.startswith("refit"):
            if refitted is None:
                cfg.refit.target = "self"
                load = os.getloadavg()[0]
                _, refitted, refit_record = refit_chosen(
                    cfg, dense, spec, inference_slice(dense.model, dense.adapter, spec, stitched), True)
                refit_record["load_before"] = round(load, 2)
            replace, record["refit"] = refitted, refit_record
        pruned = inference_slice(dense.model, dense.adapter, spec, replace)
        if "bld:" in variant:
            cfg.bld.tokens = int(variant.split("bld:")[1])
            load = os.getloadavg()[0]
            pruned, _, record["bld"] = distill_chosen(cfg, dense, pruned, spec, replace, True)
            record["bld"]["load_before"] = round(load, 2)
        name = variant if "bld:" not in variant else \
            f"{variant} ({cfg.bld.weights}, inputs {cfg.bld.inputs}, lr {cfg.bld.lr:g})"
        models[name], records[name] = pruned, record
    started = time.time()
    rows = evaluate_beside(cfg, dense, models)
    table = []
    for name, row in rows.items():
        refit, bld = records[name].get("refit", {}), records[name].get("bld", {})
        table.append({"weights": name, **{c: row.get(c) for c in COLUMNS[1:8]},
                      "refit_seconds": refit.get("seconds"), "bld_seconds": bld.get("seconds"),
                      "bld_error_before": bld.get("mean_error_before"), "bld_error_after": bld.get("mean_error_after")})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), {"run": str(a.run), "overrides": a.overrides, "rows": table,
                                            "records": records, "evaluation_seconds": round(time.time() - started)})
    lines = [f"# Blockwise local distillation of `{a.run}`", "",
             f"{spec.num_params() / 1e6:.1f}M parameters, {spec.block_sparsity():.1%} of block parameters removed; "
             f"re-fit (target self) on {cfg.data.calibration_blocks} calibration blocks, BLD on train-split blocks "
             f"of {cfg.data.seq_len} tokens, {cfg.data.batch_size} blocks a step. *Dev*: unseen_ppl_mean (news, "
             f"how-to, math). *Test*: heldback_perplexity (Austen). BLD errors: squared error to the dense layer's "
             f"output over the dense layer's squared change, mean over layers, on each layer's first batch.", "",
             markdown_table(table, COLUMNS), ""]
    write_text(a.out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
