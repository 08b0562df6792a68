"""Kill a CLI run with SIGKILL at a seeded random moment, rerun it, and compare its final artifacts.

An artifact is what a user keeps of a run: the spec (with its genotype), a hash of every exported
tensor, and the metrics without anything measured in seconds. A resumed run must leave exactly
what an uninterrupted run leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

# keys that say how a run went, not what it made: times, speeds, memory, and whether it found its scores stored
TIMING_WORDS = ("time", "seconds", "per_s", "speedup", "latency", "rss", "memory", "reused")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def timeless(value):
    """`value` without the keys whose names say they hold a time or a speed."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if not any(w in k.lower() for w in TIMING_WORDS)}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def tensor_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every tensor of every safetensors file under `folder`, by relative file and tensor name."""
    hashes = {}
    for file in sorted(folder.rglob("*.safetensors")):
        if any(part.startswith(".") or part == "checkpoints" for part in file.relative_to(folder).parts):
            continue
        with safe_open(file, "pt") as f:
            for name in sorted(f.keys()):
                data = f.get_tensor(name).contiguous().view(-1).view(torch.uint8).numpy()
                hashes[f"{file.relative_to(folder)}:{name}"] = hashlib.sha256(data.tobytes()).hexdigest()
    return hashes


def artifacts(out: Path, files: tuple[str, ...]) -> dict:
    """The final artifacts of run directory `out`: JSON files (timeless) and tensor hashes."""
    found = {"tensors": tensor_hashes(out)}
    for name in files:
        path = out / name
        if name.endswith(".jsonl"):
            found[name] = [timeless(json.loads(line)) for line in path.read_text().splitlines()]
        else:
            found[name] = timeless(json.loads(path.read_text()))
    return found


def run_cli(argv: list[str], timeout: float = 600) -> tuple[int, float, str]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "evoprune.cli", *argv], env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, time.monotonic() - started, proc.stderr


@dataclass
class Trial:
    seed: int
    kill_after_s: float
    kills: int
    reruns: int
    identical: bool


def killed_then_resumed(argv: list[str], out: Path, seed: int, window: tuple[float, float], done_file: str,
                        max_kills: int = 2) -> Trial:
    """Start `argv`, SIGKILL it at seeded random moments in `window` (seconds after start, up to
    `max_kills` times while it is still running), then rerun it to completion."""
    rng = random.Random(seed)
    kills, first_delay = 0, None
    while kills < max_kills and not (out / done_file).exists():
        delay = rng.uniform(*window)
        first_delay = first_delay if first_delay is not None else delay
        proc = subprocess.Popen([sys.executable, "-m", "evoprune.cli", *argv], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=delay)
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise AssertionError(f"run exited {proc.returncode} before its kill: {err}")
            break  # finished before the kill
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            kills += 1
    reruns = 0
    while not (out / done_file).exists():
        code, _, err = run_cli(argv)
        reruns += 1
        if code != 0:
            raise AssertionError(f"resumed run exited {code}: {err}")
    return Trial(seed, round(first_delay or 0.0, 2), kills, reruns, identical=False)
