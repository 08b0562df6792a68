"""`evoprune nas` over the database's levels against importance-sorted slices: the same command, trials and seed.

    python bench/nas_weights.py                       # SmolLM2-135M, nas's default trials, picks at 0.5 and 0.25
    python bench/nas_weights.py --sizes 0.5 --work runs/nas-weights

For each weight source W (`--weights importance`, `--weights database`) it runs
`evoprune nas --model MODEL --objectives kl,params --sparsity S --weights W --out WORK/W` for the first size S,
then again for every other size: that resumes the finished study and only picks, exports and evaluates
again. Each pick's figures (held-out and unseen-text perplexity, size, search KL) are kept in
`WORK/W/pick-S.json`, the first run's wall time in `WORK/W/first-run.json`, so a rerun redoes nothing.

The hypervolume over (KL, parameters) of each front is computed twice: against the run's own reference
point (what its report shows) and against one reference for both (the larger coordinate of the two),
as a fraction of that box, so the two are comparable. Writes `OUT/nas_weights.json` and
`OUT/nas_weights_front.png` and prints the table (results/nas_weights.md is written by hand around it).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import optuna
from optuna.trial import TrialState

import evoprune
from evoprune.atomic import write_json
from evoprune.report import markdown_table, save_png
from evoprune.whittle.pareto import hypervolume
from evoprune.whittle.study import STUDY_NAME, storage_url

SOURCES = ("importance", "database")
COLUMNS = ["weights", "size", "trials", "wall min", "pick params", "block sparsity", "search KL", "held-out ppl",
           "unseen ppl", "news", "howto", "math", "austen (held back)", "HV own ref", "HV common ref"]


def run_source(model: str, work: Path, weights: str, sizes: list[float], trials: int | None) -> dict:
    """The run of one weight source: its first run's wall time and pareto.json, and each size's pick."""
    folder = work / weights
    for size in sizes:
        path = folder / f"pick-{size:g}.json"
        if path.is_file():
            continue
        if not _picked(folder, size):  # the first size searches; the others resume the study and pick again
            evoprune.nas(model, folder, objectives="kl,params", sparsity=size, weights=weights, trials=trials)
        metrics = json.loads((folder / "metrics.json").read_text())
        pareto = json.loads((folder / "pareto.json").read_text())
        if not (folder / "first-run.json").is_file():  # a resumed run's metrics.json times only the re-pick
            seconds = sum(stage["seconds"] for stage in metrics["memory"]["stages"])
            write_json(folder / "first-run.json", {"wall_seconds": seconds, "trials": completed_trials(folder),
                                                   "pareto": pareto,
                                                   "dense_block_params": metrics["full"]["block_params"]})
        picked = next(r for r in pareto["front"] if r["trial"] == pareto["picked_trial"])
        write_json(path, {"pick": metrics["pick"], "kl": picked["kl"], "pick_reason": pareto["pick_reason"]})
    first = json.loads((folder / "first-run.json").read_text())
    return {"first": first, "picks": {size: json.loads((folder / f"pick-{size:g}.json").read_text())
                                      for size in sizes}}


def _picked(folder: Path, size: float) -> bool:
    """Whether the run in `folder` is finished with its pick at `size` (e.g. run by hand with the same command)."""
    pareto = folder / "pareto.json"
    return (folder / "metrics.json").is_file() and pareto.is_file() and \
        json.loads(pareto.read_text())["pick"] == f"sparsity>={size:g}"


def completed_trials(folder: Path) -> int:
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(folder / "study.db"))
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def table_rows(results: dict[str, dict], sizes: list[float]) -> list[dict]:
    reference = [max(r["first"]["pareto"]["reference"][k] for r in results.values()) for k in range(2)]
    rows = []
    for weights, r in results.items():
        pareto = r["first"]["pareto"]
        front = [[p["kl"], p["params"]] for p in pareto["front"]]
        common = hypervolume(front, reference) / math.prod(reference)
        own = hypervolume(front, pareto["reference"]) / math.prod(pareto["reference"])
        for size in sizes:
            pick = r["picks"][size]["pick"]
            unseen = pick.get("unseen_perplexity") or {}
            rows.append({"weights": weights, "size": f"sparsity>={size:g}", "trials": r["first"]["trials"],
                         "wall min": round(r["first"]["wall_seconds"] / 60, 1), "pick params": pick["params"],
                         "block sparsity": round(1 - pick["block_params"] / r["first"]["dense_block_params"], 3),
                         "search KL": round(r["picks"][size]["kl"], 3), "held-out ppl": round(pick["perplexity"], 1),
                         "unseen ppl": _round(pick.get("unseen_ppl_mean")), "news": _round(unseen.get("news")),
                         "howto": _round(unseen.get("howto")), "math": _round(unseen.get("math")),
                         "austen (held back)": _round(pick.get("heldback_perplexity")),
                         "HV own ref": round(own, 4), "HV common ref": round(common, 4)})
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    for weights, r in results.items():
        front = sorted((p["params"] / 1e6, p["kl"]) for p in r["first"]["pareto"]["front"])
        ax.plot(*zip(*front), "o-", ms=3, label=f"--weights {weights}")
    ax.set(xlabel="parameters (M)", ylabel="search KL", title="nas fronts by weight source")
    ax.legend(fontsize=8)
    save_png(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.5, 0.25], help="pick sizes (prune.sparsity)")
    ap.add_argument("--trials", type=int, default=None, help="default: nas.trials")
    ap.add_argument("--work", default="results/tmp/nas_weights")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    results = {w: run_source(args.model, work, w, args.sizes, args.trials) for w in SOURCES}
    rows = table_rows(results, args.sizes)
    write_json(out / "nas_weights.json", {"command": " ".join(["python bench/nas_weights.py", *argv_of(args)]),
                                          "rows": rows, "runs": results})
    plot(results, out / "nas_weights_front.png")
    print(markdown_table(rows, COLUMNS))


def argv_of(args: argparse.Namespace) -> list[str]:
    return [f"--sizes {' '.join(f'{s:g}' for s in args.sizes)}", f"--work {args.work}"] + \
        ([f"--trials {args.trials}"] if args.trials else [])


if __name__ == "__main__":
    main()
