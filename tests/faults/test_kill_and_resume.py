"""Fault injection: every command, SIGKILLed at seeded random moments and rerun, ends in exactly the
artifacts of an uninterrupted run (spec and genotype, exported tensors, metrics without timings).

`EVOPRUNE_FAULT_TRIALS` sets the trials per command (default 2); `EVOPRUNE_FAULT_LOG` names a JSONL
file that gets one line per trial (command, seed, kill moment, reruns, identical).
"""

from __future__ import annotations

import json
import os
import sys
import time
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from .harness import ENV, artifacts, killed_then_resumed, run_cli

TRIALS = int(os.environ.get("EVOPRUNE_FAULT_TRIALS", "2"))
QUIET = ["--quiet", "data.batch_size=2"]


def darwin_argv(root: Path, out: Path) -> list[str]:
    return ["darwin", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out),
            "--sparsity", "0.4", "--seq-len", "32", *QUIET, "eval.latency=false", "data.calibration_blocks=4", "data.eval_blocks=4",
            "database.num_levels=5", "search.offspring=3", "search.generations=4", "search.train_tokens=[0,64]",
            "search.fitness_tokens=[64,128]", "search.survivors=[2,1]", "search.lr=0.001",
            f"database.store={out}-store"]  # a store of each run's own, so that kills can land in its build


def family_argv(root: Path, out: Path) -> list[str]:
    """darwin with two sizes: a kill can land in the shared database, the scoring, or either size."""
    argv = darwin_argv(root, out)
    argv[argv.index("--sparsity") + 1] = "0.3,0.5"
    return argv


def train_argv(root: Path, out: Path) -> list[str]:
    return ["train", "--model", str(root / "dense"), "--teacher", str(root / "dense"), "--data",
            str(root / "corpus.txt"), "--out", str(out), "--seq-len", "32", "--tokens", "2048", *QUIET,
            "train.batch_size=4", "train.lr=0.003", "train.warmup_steps=2", "train.eval_every=4",
            "train.checkpoint_every=2", "data.eval_blocks=4"]


def nas_argv(root: Path, out: Path) -> list[str]:
    return ["nas", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out),
            "--trials", "24", "--sampler", "nsga2", "--seq-len", "16", *QUIET, "eval.latency=false", "data.calibration_blocks=2",
            "data.eval_blocks=2"]


def prune_argv(root: Path, out: Path) -> list[str]:
    return ["prune", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out),
            "--method", "uniform", "--sparsity", "0.5", "--seq-len", "32", *QUIET, "eval.latency=false", "data.calibration_blocks=4",
            "data.eval_blocks=4"]


COMMANDS = {  # argv, the file written last, the artifacts compared
    "darwin": (darwin_argv, "report.md", ("spec.json", "metrics.json")),
    "darwin-family": (family_argv, "report.md", ("front.json", "sparsity-0.3/spec.json", "sparsity-0.5/spec.json",
                                                  "sparsity-0.3/metrics.json", "sparsity-0.5/metrics.json")),
    "train": (train_argv, "report.md", ("metrics.json", "metrics.jsonl")),
    "nas": (nas_argv, "report.md", ("pareto.json",)),
    "prune": (prune_argv, "report.md", ("spec.json", "metrics.json")),
}


def startup_seconds() -> float:
    """How long a process takes to import the CLI's libraries: kills before that test nothing."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import evoprune.darwinlm.pipeline, evoprune.whittle.pipeline, evoprune.recovery"],
                   env=ENV, check=True)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_killed_run_resumes_to_the_uninterrupted_artifacts(command, tiny_run_inputs, tmp_path):
    make_argv, done_file, files = COMMANDS[command]
    reference = tmp_path / "reference"
    code, seconds, err = run_cli(make_argv(tiny_run_inputs, reference))
    assert code == 0, err
    expected = artifacts(reference, files)
    assert expected["tensors"]
    start = startup_seconds()
    window = (min(start, 0.5 * seconds), 0.95 * seconds)  # after the imports, before the end
    trials = []
    for seed in range(TRIALS):
        out = tmp_path / f"trial-{seed}"
        trial = killed_then_resumed(make_argv(tiny_run_inputs, out), out, seed, window, done_file)
        trial.identical = artifacts(out, files) == expected
        trials.append(trial)
        assert not list(tmp_path.glob(f".trial-{seed}.*")), "a partial folder or lock file was left behind"
    if os.environ.get("EVOPRUNE_FAULT_LOG"):
        with open(os.environ["EVOPRUNE_FAULT_LOG"], "a") as log:
            for t in trials:
                log.write(json.dumps({"command": command, "reference_s": round(seconds, 1), **asdict(t)}) + "\n")
    different = [t for t in trials if not t.identical]
    assert not different, f"{len(different)} of {len(trials)} resumed runs differ from the uninterrupted one: {different}"
