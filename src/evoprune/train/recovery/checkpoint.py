"""Resumable training checkpoints: weights, optimizer, RNG states (Accelerate) + position and schedule.

A checkpoint is a folder `checkpoints/step-NNNNNNN/` written under a temporary name and renamed
when complete; `checkpoints/latest.json` names the newest one. `trainer.json` inside records the
run identity, so a checkpoint of another run is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ...atomic import write_json
from ...errors import UserError
from .config import identity_digest

FORMAT = "evoprune.train_checkpoint/1"
TRAINER_FILE = "trainer.json"
LATEST = "latest.json"


@dataclass
class Position:
    """Where a run is: optimizer steps done, tokens trained on, next train block, schedule state."""

    step: int = 0
    tokens_seen: int = 0
    cursor: int = 0
    scheduler: dict | None = None


def save_checkpoint(accelerator, folder: Path, position: Position, identity: dict, keep: int) -> Path:
    """Write a checkpoint of the prepared objects + `position` into `folder/step-NNNNNNN` (all processes call)."""
    final = folder / f"step-{position.step:07d}"
    tmp = folder / f".partial-step-{position.step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / TRAINER_FILE, {"format": FORMAT, "identity": identity, "digest": identity_digest(identity),
                                        "world_size": accelerator.num_processes, **asdict(position)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_json(folder / LATEST, {"checkpoint": final.name})
        for old in sorted(folder.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    try:
        name = json.loads((folder / LATEST).read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = folder / name
    return path if (path / TRAINER_FILE).is_file() else None


def read_trainer_state(checkpoint: Path, identity: dict) -> dict:
    """The checkpoint's trainer record, after checking it belongs to the run described by `identity`."""
    try:
        record = json.loads((Path(checkpoint) / TRAINER_FILE).read_text())
        assert record.get("format") == FORMAT
    except (OSError, ValueError, AssertionError):
        raise UserError(f"{checkpoint} is not an evoprune training checkpoint (no valid {TRAINER_FILE})") from None
    if record.get("digest") != identity_digest(identity):
        theirs = record.get("identity", {})
        differ = sorted(f"{section}.{key}" for section in set(identity) | set(theirs)
                        for key in _keys(identity.get(section)) | _keys(theirs.get(section))
                        if _get(identity, section, key) != _get(theirs, section, key))
        raise UserError(f"checkpoint {checkpoint} belongs to another run (differs in {', '.join(differ) or '?'}); "
                        "resume only with the settings it was made with, or start a new run")
    return record


def load_checkpoint(accelerator, checkpoint: Path, identity: dict) -> Position:
    """Restore the prepared objects and RNG states from `checkpoint`; return its position."""
    record = read_trainer_state(checkpoint, identity)
    accelerator.load_state(str(checkpoint))
    return Position(int(record["step"]), int(record["tokens_seen"]), int(record["cursor"]), record.get("scheduler"))


def _keys(section) -> set:
    return set(section) if isinstance(section, dict) else {None}


def _get(d: dict, section, key):
    value = d.get(section)
    return value.get(key) if isinstance(value, dict) and key is not None else value
