"""`evoprune nas` over the database's levels against importance-sorted slices, and the database's MIP start against
its uniform one: the same command, trials and seed.

    python bench/nas_weights.py                       # SmolLM2-135M, nas's default trials, picks at 0.5 and 0.25
    python bench/nas_weights.py --sizes 0.5 --work runs/nas-weights
    python bench/nas_weights.py --variants database database-mip --sizes 0.5 --trials 16 --name nas_start

For each variant (`importance`: `--weights importance`; `database`: `--weights database --start uniform`, the
former default; `database-mip`: `--weights database --start mip`, the default) it runs
`evoprune nas --model MODEL --objectives kl,params --sparsity S --weights W [--start X] --out WORK/NAME` for the
first size S, then again for every other size: that resumes the finished study and only picks, exports and evaluates
again. Each pick's figures (held-out and unseen-text perplexity, size, search KL) are kept in
`WORK/NAME/pick-S.json`, the first run's wall time in `WORK/NAME/first-run.json`, so a rerun redoes nothing.

The hypervolume over (KL, parameters) of each front is computed against the run's own reference point (what its
report shows), against one reference for all (the largest coordinates), as a fraction of that box, so they
compare, and for the front of each run's first N trials (N the fewest any run has) against that common reference.
A finished run keeps its own trials (`--trials` sets only new runs). Writes `OUT/NAME.json` and
`OUT/NAME_front.png` and prints the table (results/nas_weights.md is written by hand around it).
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
from evoprune.whittle.pareto import hypervolume, pareto_front
from evoprune.whittle.study import STUDY_NAME, storage_url

# a variant: its nas arguments (the folder WORK/NAME); `database` is the former default start (the uniform genotypes),
# `database-mip` the current one (the MIP assembly of replace-one KLs, `nas.start: mip`)
VARIANTS = {"importance": {"weights": "importance"}, "database": {"weights": "database", "start": "uniform"},
            "database-mip": {"weights": "database", "start": "mip"}}
COLUMNS = ["weights", "start", "size", "trials", "wall min", "pick params", "block sparsity", "search KL",
           "held-out ppl", "unseen ppl", "news", "howto", "math", "austen (held back)", "HV own ref", "HV common ref",
           "HV common ref, first N"]


def run_source(model: str, work: Path, name: str, sizes: list[float], trials: int | None) -> dict:
    """The run of one variant: its first run's wall time and pareto.json, and each size's pick."""
    folder = work / name
    for size in sizes:
        path = folder / f"pick-{size:g}.json"
        if path.is_file():
            continue
        if not _picked(folder, size):  # the first size searches; the others resume the study and pick again
            evoprune.nas(model, folder, objectives="kl,params", sparsity=size, trials=trials, **VARIANTS[name])
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
    return len(trial_values(folder))


def trial_values(folder: Path) -> list[list[float]]:
    """(KL, parameters) of every completed trial of the run in `folder`, in the order they ran."""
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(folder / "study.db"))
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [list(t.values) for t in sorted(done, key=lambda t: t.number)]


def table_rows(results: dict[str, dict], sizes: list[float], work: Path) -> list[dict]:
    """One row per variant and size. `HV common ref, first N`: the front of each run's first N trials, N the fewest
    trials of the runs compared (the front a run of N trials would have had: every sampler is deterministic in the
    study's history), against the common reference."""
    reference = [max(r["first"]["pareto"]["reference"][k] for r in results.values()) for k in range(2)]
    first_n = min(r["first"]["trials"] for r in results.values())
    rows = []
    for name, r in results.items():
        pareto = r["first"]["pareto"]
        front = [[p["kl"], p["params"]] for p in pareto["front"]]
        common = hypervolume(front, reference) / math.prod(reference)
        own = hypervolume(front, pareto["reference"]) / math.prod(pareto["reference"])
        early = trial_values(work / name)[:first_n]
        common_n = hypervolume([early[i] for i in pareto_front(early)], reference) / math.prod(reference)
        for size in sizes:
            pick = r["picks"][size]["pick"]
            unseen = pick.get("unseen_perplexity") or {}
            rows.append({"weights": VARIANTS[name]["weights"], "start": VARIANTS[name].get("start", "—"),
                         "size": f"sparsity>={size:g}", "trials": r["first"]["trials"],
                         "wall min": round(r["first"]["wall_seconds"] / 60, 1), "pick params": pick["params"],
                         "block sparsity": round(1 - pick["block_params"] / r["first"]["dense_block_params"], 3),
                         "search KL": round(r["picks"][size]["kl"], 3), "held-out ppl": round(pick["perplexity"], 1),
                         "unseen ppl": _round(pick.get("unseen_ppl_mean")), "news": _round(unseen.get("news")),
                         "howto": _round(unseen.get("howto")), "math": _round(unseen.get("math")),
                         "austen (held back)": _round(pick.get("heldback_perplexity")),
                         "HV own ref": round(own, 4), "HV common ref": round(common, 4),
                         "HV common ref, first N": f"{common_n:.4f} (N={first_n})"})
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    for name, r in results.items():
        front = sorted((p["params"] / 1e6, p["kl"]) for p in r["first"]["pareto"]["front"])
        ax.plot(*zip(*front), "o-", ms=3, label=f"{name} ({r['first']['trials']} trials)")
    ax.set(xlabel="parameters (M)", ylabel="search KL", title="nas fronts by weight source and start")
    ax.legend(fontsize=8)
    save_png(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.5, 0.25], help="pick sizes (prune.sparsity)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--trials", type=int, default=None, help="default: nas.trials (a finished run keeps its own)")
    ap.add_argument("--work", default="results/tmp/nas_weights")
    ap.add_argument("--out", default="results")
    ap.add_argument("--name", default="nas_weights", help="the stem of OUT/NAME.json and OUT/NAME_front.png")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    results = {name: run_source(args.model, work, name, args.sizes, args.trials) for name in args.variants}
    rows = table_rows(results, args.sizes, work)
    write_json(out / f"{args.name}.json", {"command": " ".join(["python bench/nas_weights.py", *argv_of(args)]),
                                          "rows": rows, "runs": results})
    plot(results, out / f"{args.name}_front.png")
    print(markdown_table(rows, COLUMNS))


def argv_of(args: argparse.Namespace) -> list[str]:
    return [f"--sizes {' '.join(f'{s:g}' for s in args.sizes)}", f"--variants {' '.join(args.variants)}",
            f"--work {args.work}", f"--name {args.name}"] + ([f"--trials {args.trials}"] if args.trials else [])


if __name__ == "__main__":
    main()
