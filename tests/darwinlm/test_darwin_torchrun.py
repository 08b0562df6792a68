"""`evoprune darwin` under torchrun: the evaluations are shared out, rank 0 alone writes, the result is one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("darwin_torchrun_script.py")
TINY = ["--seq-len", "32", "--sparsity", "0.4", "--levels", "5", "--quiet", "data.calibration_blocks=4",
        "data.eval_blocks=4", "data.batch_size=2", "eval.latency=false", "search.offspring=3", "search.generations=2",
        "search.init_samples=3", "search.train_tokens=[0,64]", "search.fitness_tokens=[64,128]",
        "search.survivors=[2,1]", "search.lr=0.001"]


def _darwin(root: Path, out: Path, report: Path, processes: int) -> None:
    report.mkdir()
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([*launcher, str(SCRIPT), str(report), "darwin", "--model", str(root / "dense"), "--data",
                           str(root / "corpus.txt"), "--out", str(out), *TINY], env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_two_processes_find_the_genotype_of_one_and_only_rank_0_writes(tiny_run_inputs, tmp_path):
    _darwin(tiny_run_inputs, tmp_path / "one", tmp_path / "one-ranks", 1)
    _darwin(tiny_run_inputs, tmp_path / "two", tmp_path / "two-ranks", 2)
    one, two = (json.loads((tmp_path / d / "search" / "state.json").read_text()) for d in ("one", "two"))
    assert one["parent"] == two["parent"] and one["generation"] == two["generation"] == 2

    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert timeless(one["history"]) == timeless(two["history"])  # same offspring, scores and winners every time
    assert json.loads((tmp_path / "one" / "spec.json").read_text())["layers"] == \
        json.loads((tmp_path / "two" / "spec.json").read_text())["layers"]
    assert _files(tmp_path / "one") == _files(tmp_path / "two")  # nothing more (no other rank's files)

    single = json.loads((tmp_path / "one-ranks" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two-ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert single["class"] == "CandidateEvaluator" and single["local"] == single["evaluations"] == one["evaluations"]
    assert all(r["class"] == "DistributedCandidateEvaluator" and r["world"] == 2 and r["code"] == 0 for r in ranks)
    assert all(r["evaluations"] == one["evaluations"] for r in ranks)  # every rank counts all evaluations
    assert ranks[0]["local"] > 0 and ranks[1]["local"] > 0  # ... but made only its share
    assert ranks[0]["local"] + ranks[1]["local"] == one["evaluations"]
    assert ranks[1]["written"] == [] and {"search/state.json", "spec.json", "report.md"} <= set(ranks[0]["written"])
