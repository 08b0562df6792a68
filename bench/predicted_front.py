"""How well the MIP's predicted KL (summed replace-one KLs) ranks the KL its genotypes have on held-out text.

    python bench/predicted_front.py                                  # SmolLM2-135M, the default settings
    python bench/predicted_front.py --measured 25 model.source=...   # every point measured; any config field

The run's database and replace-one scores (the shared store, as `evoprune darwin` makes them), the MIP at
every 2.5% of block sparsity from 20% to 80%, `--measured` of them scored on the first
`search.predicted_front_tokens` of the held-out blocks (darwinlm/predicted_front.py, as a darwin family
does). Writes results/predicted_front.md and .png; the work folder resumes a killed run.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from evoprune.atomic import write_text
from evoprune.cli import parse_with_overrides
from evoprune.config import load_config
from evoprune.darwinlm import pipeline as darwin
from evoprune.models import load_source
from evoprune.report import markdown_table

COLUMNS = ["sparsity", "achieved sparsity", "params", "block params", "predicted KL", "measured KL"]


def main(argv: list[str] | None = None) -> None:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", type=int, default=13, help="points measured (a family run's default: 7)")
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens per measured point (family: 2048)")
    ap.add_argument("--work", default="results/tmp/predicted_front")
    ap.add_argument("--out", default="results")
    args = parse_with_overrides(ap, argv)
    cfg = load_config(None, args.overrides)
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, predicted_front=args.measured,
                                                              predicted_front_tokens=args.tokens))
    dense = load_source(cfg)
    work, out = Path(args.work), Path(args.out)
    db = darwin.build_database(cfg, dense, work / "database")
    front = darwin.run_predicted_front(cfg, dense, db, darwin.stages_of(cfg), work / "predicted_front")
    dense_blocks = darwin.cost_table(db, "params").full()
    embeddings = sum(p.numel() for p in dense.model.parameters()) - dense_blocks
    rows = [{"sparsity": p.sparsity, "achieved sparsity": round(1 - p.block_params / dense_blocks, 4),
             "params": int(p.block_params + embeddings), "block params": int(p.block_params),
             "predicted KL": p.predicted_kl, "measured KL": "" if p.measured_kl is None else p.measured_kl}
            for p in front.points]
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "predicted_front" / "predicted_front.png", out / "predicted_front.png")
    rho = "n/a" if front.rho is None else f"{front.rho:.3f}"
    text = (f"# The MIP as a front generator: predicted against measured KL\n\n"
            f"Command: `{' '.join(['python bench/predicted_front.py', *argv])}`\n\n"
            f"Model {cfg.model.source}; database and replace-one scores at the default settings (the ones "
            f"`evoprune darwin` uses); predicted KL = the summed replace-one KLs of the MIP genotype; measured KL = "
            f"its one-shot KL on the first {cfg.search.predicted_front_tokens} held-out tokens.\n\n"
            f"**Spearman rho = {rho}** over {len(front.measured())} measured points of {len(front.points)}.\n\n"
            + markdown_table(rows, COLUMNS) + "\n![predicted against measured KL](predicted_front.png)\n")
    write_text(out / "predicted_front.md", text)
    print(text)


if __name__ == "__main__":
    main()
