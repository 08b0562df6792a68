"""The shared database store: one second-order database per model, calibration tokens and settings, built
once and reused by every run that needs it, whatever its target.

A database does not depend on the size a search aims for, so `darwin` runs at 25%, 40% and 50% of the
same model and data use the same one. It lives in `cache_dir()/databases/<key>/`, where the key is the
database's own stamp: the fingerprint of every weight, of the calibration tokens, and the settings
(keyed by content like the token and teacher caches, never by a path). A run folder links to it
(`RUN/database` -> the store).

One process builds a given database at a time: a builder holds `<key>.lock` (an `fcntl.flock`), and a
second run needing the same database waits for it, then reuses it. A killed build leaves its solved
layers, which the next build resumes from. A stored database that no longer loads (a shard deleted or
cut short) is rebuilt, never silently reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..assets import cache_dir
from ..atomic import unique_suffix
from ..errors import UserError
from ..fingerprint import tokens_fingerprint
from .database import Database, DatabaseSettings, database_stamp, model_fingerprint

log = logging.getLogger(__name__)


def store_dir() -> Path:
    """Where shared databases live: `$EVOPRUNE_CACHE/databases` (default `~/.cache/evoprune/databases`)."""
    return cache_dir() / "databases"


def database_key(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor,
                 settings: DatabaseSettings) -> str:
    """The store key of the database of `model` calibrated on `blocks` with `settings`."""
    return database_stamp(model_fingerprint(model, adapter), tokens_fingerprint(blocks), settings)


@contextlib.contextmanager
def building(folder: Path) -> Iterator[None]:
    """Hold the exclusive build lock of the stored database `folder`, waiting (with a note) for another builder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.with_name(folder.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another run is building database %s; waiting for it", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the lock file stays (removing it would race with a waiter)


def shared_database(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, settings: DatabaseSettings,
                    batch_size: int = 4, progress: bool = True, root: Path | None = None) -> Database:
    """The stored database for (`model`, `blocks`, `settings`): loaded when built before, else built (or
    finished) now under the build lock."""
    settings.check()
    folder = (root or store_dir()) / database_key(model, adapter, blocks, settings)
    with building(folder):
        if (folder / "index.json").is_file():
            try:
                db = Database.load(folder, model, adapter, settings, blocks)
                log.info("database: reusing %s", folder)
                return db
            except UserError as e:
                log.warning("stored database %s is unusable (%s); building it again", folder, e)
                shutil.rmtree(folder, ignore_errors=True)
        return Database.build(model, adapter, blocks, settings, folder, batch_size, progress)


def link_run_database(link: Path, target: Path) -> None:
    """Make `link` (a run's `database`) point at the stored database `target`, replacing an older link."""
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
        link.unlink()
    elif link.exists():
        raise UserError(f"{link} exists and is not a link to the database store; pass --force to start the run over")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{unique_suffix()}.tmp")  # a kill here leaves a name rundir sweeps
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)
