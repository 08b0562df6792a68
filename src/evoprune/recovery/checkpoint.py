"""Resumable training checkpoints: weights, optimizer, RNG states (Accelerate) + position and schedule.

A checkpoint is a folder `checkpoints/step-NNNNNNN/` written under a temporary name and renamed
when complete; `checkpoints/latest.json` names the newest one. `trainer.json` inside records the
run identity, so a checkpoint of another run is refused. A file cut short (a full disk, a copy
stopped half way) is refused naming it, before anything is loaded.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..atomic import write_json
from ..errors import UserError
from ..rundir import changed_keys, read_run_json
from .config import identity_digest

RESTART = "pass --force to start the run over, or --resume-from an earlier checkpoint"

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
    if not (folder / LATEST).is_file():
        return None
    try:
        name = read_run_json(folder / LATEST)["checkpoint"]
    except (KeyError, TypeError):
        raise UserError(f"{folder / LATEST} names no checkpoint; pass --force to start the run over") from None
    path = folder / name
    return path if (path / TRAINER_FILE).is_file() else None


def read_trainer_state(checkpoint: Path, identity: dict) -> dict:
    """The checkpoint's trainer record, after checking it belongs to the run described by `identity`."""
    path = Path(checkpoint) / TRAINER_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{checkpoint} is not a usable evoprune training checkpoint ({path.name} missing or "
                        f"corrupt); {RESTART}") from None
    if record.get("digest") != identity_digest(identity):
        differ = changed_keys(record.get("identity", {}), identity)
        raise UserError(f"checkpoint {checkpoint} belongs to another run (differs in {', '.join(differ) or '?'}); "
                        "resume only with the settings it was made with, or start a new run")
    return record


def load_checkpoint(accelerator, checkpoint: Path, identity: dict) -> Position:
    """Restore the prepared objects and RNG states from `checkpoint`; return its position."""
    record = read_trainer_state(checkpoint, identity)
    check_files(Path(checkpoint))
    try:
        accelerator.load_state(str(checkpoint))
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as e:
        reason = (str(e).splitlines() or [""])[0]
        raise UserError(f"cannot load checkpoint {checkpoint} ({type(e).__name__}: {reason}); {RESTART}") from None
    return Position(int(record["step"]), int(record["tokens_seen"]), int(record["cursor"]), record.get("scheduler"))


def check_files(checkpoint: Path) -> None:
    """Refuse a checkpoint whose weight, optimizer or RNG files are cut short, naming the first such file."""
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):  # checks the header covers the whole file
                    pass
            elif path.suffix in (".bin", ".pkl"):
                zipfile.ZipFile(path).close()  # torch.save writes a zip: its directory is at the very end
        except (OSError, zipfile.BadZipFile, SafetensorError) as e:
            reason = (str(e).splitlines() or [""])[0]
            raise UserError(f"checkpoint file {path} is corrupt or truncated ({reason}); {RESTART}") from None
