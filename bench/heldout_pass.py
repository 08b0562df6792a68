"""Held-out perplexity and KL in one forward pass against two, timed side by side on the same model and blocks.

    python bench/heldout_pass.py                        # SmolLM2-135M, 8 held-out blocks, 3 rounds
    python bench/heldout_pass.py --blocks 4 --rounds 2 data.seq_len=256

The two ways alternate round by round (so load on the machine hits both alike) and the table gives each
round's seconds, the median ratio, and the largest difference of their figures (they must agree to float
rounding). Writes results/heldout_pass.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from evoprune.atomic import write_json, write_text
from evoprune.config import load_config
from evoprune.data import data_blocks
from evoprune.evaluation.heldout import heldout_figures
from evoprune.evaluation.perplexity import mean_nll
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.models import load_source
from evoprune.report import markdown_table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(None, ["model.source=smollm2-135m", *args.overrides])
    dense = load_source(cfg)
    blocks = data_blocks(cfg, dense.tokenizer, "eval", args.blocks)
    teacher = teacher_for(dense.model, str(dense.path), blocks, cfg.eval, cfg.data.batch_size, False)
    model, batch = dense.model, cfg.data.batch_size
    rows, gaps = [], []
    for i in range(args.rounds):
        started = time.perf_counter()
        nll, kl = mean_nll(model, blocks, batch), kl_to_teacher(model, blocks, teacher, batch_size=batch)
        two = time.perf_counter() - started
        started = time.perf_counter()
        one = heldout_figures(model, blocks, teacher, batch).row()
        single = time.perf_counter() - started
        gaps.append(max(abs(one["eval_nll"] - nll), abs(one["kl_to_teacher"] - kl)))
        rows.append({"round": i + 1, "two passes (s)": two, "one pass (s)": single, "ratio": single / two})
    ratio = statistics.median(r["ratio"] for r in rows)
    write_json(args.out / "heldout_pass.json", {"rows": rows, "median_ratio": ratio, "largest_gap": max(gaps),
                                                "blocks": args.blocks, "seq_len": cfg.data.seq_len})
    text = (f"# {__doc__.splitlines()[0]}\n\n`python bench/heldout_pass.py "
            f"{' '.join(sys.argv[1:] if argv is None else argv)}`: SmolLM2-135M, {args.blocks} held-out blocks of "
            f"{cfg.data.seq_len} tokens, batch {batch}, the dense model against its own top-{cfg.eval.top_k} "
            f"teacher.\n\n" + markdown_table(rows) + f"\nMedian time ratio one pass / two passes: **{ratio:.2f}**; "
            f"largest difference of the figures: {max(gaps):.2e} nats.\n")
    write_text(args.out / "heldout_pass.md", text)
    print(text)


if __name__ == "__main__":
    main()
