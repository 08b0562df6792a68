"""Wall time of the README's main job and of a four-size family, today's code beside an older commit.

    python bench/main_job.py                        # HEAD against 20c7914: results/main_job.{md,json}
    python bench/main_job.py --old HEAD~3 --work /tmp/mj --out /tmp/mj-out

Each run starts as a new user's would: an empty evoprune cache of its own (only the embedded model and
text, which `evoprune fetch-assets` unpacks, are linked in), so tokens, teacher logits, the database,
the replace-one scores and the dense model's quality figures are all computed inside the timed run.
The older commit runs from a `git worktree` of it with the same installed packages. The runs go one
after another in one call of this script (this machine is noisy: compare only rows of one call), and
the load average before and after each run is kept beside its time.

Rows: the main job (`darwin --sparsity 0.5 --profile mip`) at both commits, the family
(`--sparsity 0.25,0.4,0.5,0.6`) today; per-stage seconds come from each run's `metrics.json`.
A finished run in --work is read, not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from evoprune.assets import cache_dir
from evoprune.atomic import write_json, write_text
from evoprune.report import markdown_table

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = ["darwin", "--model", "smollm2-135m", "--sparsity", "0.5", "--profile", "mip", "--force", "--quiet"]
FAMILY_SIZES = "0.25,0.4,0.5,0.6"


def checkout(rev: str, work: Path) -> Path:
    """A worktree of `rev` under `work` (made once)."""
    tree = work / f"tree-{rev}"
    if not tree.is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True)
    return tree


def fresh_cache(path: Path) -> Path:
    """An empty evoprune cache holding only links to the unpacked assets and the embedded model."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("assets", "models"):
        link = path / name
        if not link.exists():
            link.symlink_to(cache_dir() / name)
    return path


def timed_run(name: str, args: list[str], src: Path, work: Path) -> dict:
    """Run `evoprune <args>` from `src` in a fresh cache; its wall time and per-stage seconds."""
    record_path = work / f"{name}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    out = work / name
    env = {**os.environ, "EVOPRUNE_CACHE": str(fresh_cache(work / f"cache-{name}")), "PYTHONPATH": str(src)}
    load_before = os.getloadavg()[0]
    started = time.time()
    subprocess.run([sys.executable, "-m", "evoprune.cli", *args, "--out", str(out)], env=env, check=True)
    record = {"name": name, "seconds": round(time.time() - started, 1), "load_before": round(load_before, 2),
              "load_after": round(os.getloadavg()[0], 2), "stages": stage_seconds(out)}
    write_json(record_path, record)
    return record


def stage_seconds(out: Path) -> dict[str, float]:
    """Seconds per stage of a run folder. A family's sizes each record the stages of the whole process so far,
    so the last size's (the largest) figures are the family's."""
    folders = [out] if (out / "metrics.json").is_file() else sorted(p for p in out.iterdir()
                                                                     if (p / "metrics.json").is_file())
    total: dict[str, float] = {}
    for folder in folders:
        for stage in json.loads((folder / "metrics.json").read_text()).get("memory", {}).get("stages", []):
            total[stage["stage"]] = round(max(total.get(stage["stage"], 0.0), stage["seconds"]), 1)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default="20c7914", help="the commit to compare with")
    p.add_argument("--work", type=Path, default=Path("runs/bench-main-job"))
    p.add_argument("--out", type=Path, default=REPO / "results" / "main_job")
    p.add_argument("--no-family", action="store_true", help="time only the main job at both commits")
    p.add_argument("--no-head-main", action="store_true", help="time the family beside the older main job only")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    runs = [timed_run(f"main-{a.old}", MAIN_JOB, checkout(a.old, a.work) / "src", a.work)]
    if not a.no_head_main:
        runs.append(timed_run(f"main-{head}", MAIN_JOB, REPO / "src", a.work))
    if not a.no_family:
        family = [arg if arg != "0.5" else FAMILY_SIZES for arg in MAIN_JOB]
        runs.append(timed_run(f"family-{head}", family, REPO / "src", a.work))
    write_report(runs, a.out, a.old, head)


def write_report(runs: list[dict], out: Path, old: str, head: str) -> None:
    stages = sorted({s for r in runs for s in r["stages"]}, key=lambda s: -max(r["stages"].get(s, 0) for r in runs))
    rows = [{"run": r["name"], "minutes": round(r["seconds"] / 60, 1), "load before/after":
             f"{r['load_before']}/{r['load_after']}", **{s: r["stages"].get(s, "") for s in stages}} for r in runs]
    by_name = {r["name"]: r["seconds"] for r in runs}
    lines = [f"# Wall time of the main job: {head} beside {old}", "",
             f"2 CPU cores, every run in an empty cache of its own, one after another in one call of "
             f"`bench/main_job.py`. Stage columns are seconds.", "",
             markdown_table(rows, list(rows[0])), ""]
    if f"family-{head}" in by_name:
        family = by_name[f"family-{head}"]
        beside_head = (f", and {family / by_name[f'main-{head}']:.2f}x that of the single-size main job at {head}"
                       if f"main-{head}" in by_name else "")
        lines += [f"Four sizes from one run take **{family / by_name[f'main-{old}']:.2f}x** the wall time of the "
                  f"single-size main job at {old} (the issue's \"today\"){beside_head}.", ""]
    if f"main-{head}" in by_name:
        lines += [f"Main job today / before: **{by_name[f'main-{head}'] / by_name[f'main-{old}']:.2f}x**.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"old": old, "head": head, "runs": runs})
    write_text(out.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    main()
