"""Distributed fitness: two torchrun processes select exactly what one process selects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_fitness_script.py")


def _env() -> dict:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_select_the_same_candidates_as_one(tiny_run_inputs, tmp_path):
    args = [str(tiny_run_inputs)]
    _run([sys.executable, str(SCRIPT), *args, str(tmp_path / "one.json"), str(tmp_path / "one")])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(SCRIPT), *args, str(tmp_path / "two.json"), str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["world"], two["world"]) == (1, 2)
    assert one["winner"] == two["winner"]
    assert len(one["scores"][0]) == 7 and len(one["scores"][1]) == 3  # all candidates, then the survivors
    for a, b in zip(one["scores"], two["scores"]):
        assert [g for g, _ in a] == [g for g, _ in b]
        assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6, abs=1e-9)
    assert one["parent"] == two["parent"] and one["evaluations"] == two["evaluations"]
    assert [h["parent"] for h in one["history"]] == [h["parent"] for h in two["history"]]
