"""One run directory, one writer: the lock every command holds on its `--out`, and resume checks.

Two designs share this module:
- `prune`, `slice` and `eval` build their directory under a temporary name (`.NAME.*.partial`)
  and rename it onto `--out` when complete (`atomic.staged_dir`);
- `darwin`, `database`, `search`, `nas` and `train` are resumable: they write into `--out` as they
  go, every file atomically, and a rerun continues from what is there.
  `ResumableRun` is the one place their directory is checked, started and replaced (--force).
Both hold `run_lock(out)` for the whole command, so a second process on the same `--out` is
refused with the first one's pid and command. While holding it, leftovers of a killed run
(`.NAME.*.partial`, `.NAME.old.*`) are removed, since no living writer can own them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .atomic import check_creatable, write_json
from .errors import UserError

log = logging.getLogger(__name__)


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


def check_writable_out(out: str | os.PathLike, directory: bool = True) -> Path:
    """Refuse an `--out` that is an existing file or whose parent cannot be written, before any work."""
    out = Path(out)
    if not out.name or out.name in (".", ".."):
        raise UserError(f"--out {str(out)!r} must name a directory, e.g. runs/my-run")
    if directory and out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory; choose another --out")
    return check_creatable(out)


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the exclusive writer lock of run directory `out` (an `fcntl.flock` on `.NAME.lock` beside it).

    The operating system releases the lock when the process dies, so a killed run never blocks
    the next one. Raises UserError naming the holder when another process writes `out`.
    """
    out = check_writable_out(out)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out)
    fd = _acquire(path, out)
    try:
        holder = json.dumps({"pid": os.getpid(), "command": command or " ".join(sys.argv)})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        remove_stale_partials(out)
        yield out
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a waiter then locks a new file, never this one
        os.close(fd)


def _acquire(path: Path, out: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"{out} is being written by another process ({holder}); wait for it to finish "
                            "or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we opened it: lock the new one


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {holder['pid']}: {holder['command']}"
    except (ValueError, KeyError, UnicodeDecodeError):
        return "pid unknown"


STAGED = re.compile(r"^\..+\.(old\.)?\d+-[0-9a-f]{8}(\.partial|\.tmp.*)?$")  # atomic.py's temporary names


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove what killed writers left: `.NAME.*.partial` and `.NAME.old.*` beside `out`, and inside it every
    temporary file or folder of `atomic.py` (`.x.<pid>-<id>.tmp.png`, `.model.<pid>-<id>.partial/` ...).

    Call only while holding the run's lock: no living writer can own them then.
    """
    stale = [p for p in out.absolute().parent.glob(f".{out.name}.*")
             if p.name.endswith(".partial") or p.name.startswith(f".{out.name}.old.")]
    if out.is_dir():
        stale += [p for p in sorted(out.rglob(".*")) if STAGED.match(p.name) and not any(
            parent in stale for parent in p.parents)]
    for p in stale:
        log.warning("removing %s, left by a run that was killed", p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return stale


def changed_keys(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted names of every setting that differs between two JSON-like values (nested dicts compared leaf by leaf)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current), key=str)
        return [k for key in keys
                for k in changed_keys(saved.get(key, _MISSING), current.get(key, _MISSING), f"{prefix}{key}.")]
    return [] if _normal(saved) == _normal(current) else [prefix.rstrip(".") or "(value)"]


class _Missing:
    def __repr__(self) -> str:
        return "(unset)"


_MISSING = _Missing()


def _normal(value: Any) -> Any:
    """Tuples and lists compare equal (a JSON round trip turns one into the other)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def describe_changes(saved: dict, current: dict, keys: list[str]) -> str:
    """`a.b: 1 -> 2, c: x -> y` for the changed `keys`."""
    def get(d: Any, key: str) -> Any:
        for part in key.split("."):
            if not isinstance(d, dict) or part not in d:
                return _MISSING
            d = d[part]
        return d

    return ", ".join(f"{k}: {_short(get(saved, k))} -> {_short(get(current, k))}" for k in keys)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def refuse_changed(out: str | os.PathLike, saved: dict, current: dict, what: str = "run") -> None:
    """UserError naming every changed setting when a rerun on `out` would resume with other settings."""
    keys = changed_keys(saved, current)
    if keys:
        raise UserError(f"{out} holds a {what} with other settings ({describe_changes(saved, current, keys)}); "
                        "use the same settings to resume, or --force to start over")


def read_run_json(path: str | os.PathLike) -> Any:
    """A run's JSON file; a corrupt or unreadable one is a UserError naming it and the way out."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "pass --force to start the run over") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; pass --force to start the run over") from None


def holding_run_lock(fn: Callable) -> Callable:
    """Decorate a library function with an `out` argument so that it runs under `run_lock(out)`."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        with run_lock(signature.bind(*args, **kwargs).arguments["out"]):
            return fn(*args, **kwargs)

    return locked


@dataclass(frozen=True)
class ResumableRun:
    """A run directory that a rerun continues, marked by a JSON file of the settings its results depend on.

    Every resumable command (darwin / database / search, nas, train) goes through this class: `holds_run`
    before the model loads (refusing another kind of folder or other settings), `start` once every check
    has passed (replacing the old run only then, with --force). Call both under `run_lock(out)`.
    """

    out: Path
    kind: str  # named in messages: "darwin", "nas", "train"
    marker: str  # the file inside `out` holding the settings, e.g. "darwin_run.json"

    @property
    def marker_path(self) -> Path:
        return Path(self.out) / self.marker

    def holds_run(self, settings: dict, force: bool = False, only_given: bool = False) -> bool:
        """True when `out` holds this kind of run with these settings (it resumes); False when `out` is
        empty, absent or `force` replaces it.

        Raises UserError when `out` holds something else, or this kind of run with other settings.
        With `only_given`, only the keys of `settings` are compared (a first check before all are known).
        """
        out = Path(self.out)
        if force or not out.is_dir() or not any(out.iterdir()):
            return False
        if not self.marker_path.is_file():
            raise UserError(f"output directory {out} exists and is not an evoprune {self.kind} run; pass --force "
                            "to replace it, or choose another --out")
        saved = read_run_json(self.marker_path)
        if not isinstance(saved, dict):
            raise UserError(f"{self.marker_path} is corrupt (not a JSON object); pass --force to start the run over")
        if only_given:
            saved = {k: saved.get(k) for k in settings}
        refuse_changed(out, saved, settings, f"{self.kind} run")
        return True

    def start(self, settings: dict, force: bool = False) -> Path:
        """Create `out` (with `force`, replace what is there) and write the marker; call after every check."""
        out = Path(self.out)
        if force and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(self.marker_path, settings)
        return out
