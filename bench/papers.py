"""The papers' perplexity (WikiText-2, optionally C4) of the dense model, uniform, depth and the default darwin
model at one size, so evoprune's results can be set beside a published table row.

    python bench/papers.py                                  # WikiText-2 from the hub (or its cache)
    python bench/papers.py --wikitext2 wikitext-2-raw-v1-test.parquet --c4 c4-validation.00000-of-00008.json.gz
    python bench/papers.py --model meta-llama/Llama-3.2-1B --sparsity 0.5 --work runs/papers-llama

WikiText-2 and C4 are computed as SparseGPT's `datautils.py` does (evaluation/paper_perplexity.py: the test split
joined with "\\n\\n", tokenized once, non-overlapping windows of 2048 tokens or the model's maximum). The data is
read before any pruning: without it (no network and no local copy) the bench stops in one line and writes nothing.
Each pruned model is made once in `--work` (uniform and depth with `evoprune prune`, darwin with `--profile mip`)
and reused by a later call; the figures go to `--out`.md / .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from evoprune import api
from evoprune.atomic import write_json, write_text
from evoprune.config import parse_override
from evoprune.errors import UserError
from evoprune.evaluation.paper_perplexity import paper_perplexity, paper_sets, paper_text
from evoprune.models import load_model
from evoprune.report import markdown_table

METHODS = ("uniform", "depth", "darwin")


def pruned_model(method: str, model: str, sparsity: float, work: Path, overrides: dict) -> Path:
    """The exported model folder of `method` at `sparsity`, made in `work/method` unless it is there."""
    out = work / f"{method}-{sparsity:g}"
    if (out / "model" / "config.json").is_file():
        return out / "model"
    overrides = {"eval.latency": False, **overrides}
    if method == "darwin":
        result = api.darwin(model, out, sparsity=sparsity, profile="mip", overrides=overrides, force=True)
    else:
        result = api.prune(model, out, method=method, sparsity=sparsity, overrides=overrides, force=True)
    return Path(result.model_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="the embedded model, a local folder or a hub id")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of the blocks' parameters removed")
    p.add_argument("--wikitext2", help="a local copy of the WikiText-2 raw test split (default: the hub)")
    p.add_argument("--c4", help="a local copy of C4's validation shard 00000 (C4 is skipped unless given)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--work", type=Path, default=Path("runs/bench-papers"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "papers")
    p.add_argument("overrides", nargs="*", help="config overrides of the pruning runs, e.g. data.calibration_blocks=64")
    a = p.parse_args(argv)
    try:
        sets = paper_sets("wikitext2,c4" if a.c4 else "wikitext2")
        texts = {s.name: paper_text(s, a.wikitext2 if s.name == "wikitext2" else a.c4) for s in sets}
        methods = [m.strip() for m in a.methods.split(",") if m.strip()]
        if unknown := [m for m in methods if m not in METHODS]:
            raise UserError(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        overrides = {".".join(key): value for key, value in map(parse_override, a.overrides)}
        folders = {"dense": None, **{m: pruned_model(m, a.model, a.sparsity, a.work, overrides) for m in methods}}
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = []
    for name, folder in folders.items():
        loaded = load_model(a.model if folder is None else str(folder))
        row = {"model": name, "params": sum(t.numel() for t in loaded.model.parameters())}
        for s in sets:
            started = time.time()
            figures = paper_perplexity(loaded.model, loaded.tokenizer, s, texts[s.name], a.seq_len)
            row.update({f"{s.name}_ppl": round(figures["perplexity"], 3), f"{s.name}_windows": figures["windows"],
                        "seq_len": figures["seq_len"], f"{s.name}_seconds": round(time.time() - started, 1)})
        rows.append(row)
        print(row, flush=True)
    settings = {"model": a.model, "sparsity": a.sparsity, "wikitext2": a.wikitext2 or "hub", "c4": a.c4,
                "seq_len": a.seq_len, "darwin_profile": "mip"}
    write_json(a.out.with_suffix(".json"), {"settings": settings, "rows": rows})
    write_text(a.out.with_suffix(".md"), "# The papers' perplexity\n\n" + markdown_table(rows) + "\n\n"
               f"Made by `python bench/papers.py` with {settings}. WikiText-2/C4 as SparseGPT's datautils computes "
               "them (`evaluation/paper_perplexity.py`); pruned at the same block sparsity, darwin with "
               "`--profile mip`.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
