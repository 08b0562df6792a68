"""The database a run searches over: its settings from the run configuration, and the database itself, taken
from the shared store (`store`) or kept in the run, as `database.store` says. darwin and nas both use it."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from ..config import RunConfig
from ..data import data_blocks
from ..models import LoadedModel
from .database import Database, DatabaseSettings
from .store import link_run_database, shared_database

log = logging.getLogger(__name__)


def database_settings(cfg: RunConfig) -> DatabaseSettings:
    d = cfg.data
    fields = {k: v for k, v in asdict(cfg.database).items() if k != "store"}  # where it is kept changes nothing
    return DatabaseSettings(**fields, multiple=cfg.prune.multiple,
                            calibration=f"{d.source}|{d.text_field}|calibration|{d.calibration_blocks}x{d.seq_len}",
                            space=cfg.search.space)


def build_database(cfg: RunConfig, dense: LoadedModel, path: Path, progress: bool = True) -> Database:
    """The run's database at `path`: with database.store shared (or a folder), the stored one for this model,
    calibration text and settings, built only if no run built it before, and `path` a link to it."""
    settings = database_settings(cfg)
    blocks = data_blocks(cfg, dense.tokenizer, "calibration", cfg.data.calibration_blocks)
    kept_in_run = cfg.database.store == "run" or (path.is_dir() and not path.is_symlink())  # or a run made so
    if kept_in_run and (path / "index.json").exists():  # resumed: built from these very weights and tokens?
        return Database.load(path, dense.model, dense.adapter, settings, blocks)
    started = time.time()
    if kept_in_run:
        db = Database.build(dense.model, dense.adapter, blocks, settings, path, cfg.data.batch_size, progress)
    else:
        root = None if cfg.database.store == "shared" else Path(cfg.database.store).expanduser().absolute()
        db = shared_database(dense.model, dense.adapter, blocks, settings, cfg.data.batch_size, progress, root)
        link_run_database(path, db.path)
    log.info("database ready in %.0f s, %.1f MB (%s)", time.time() - started, db.size_bytes() / 2**20, db.path)
    return db
