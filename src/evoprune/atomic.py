"""Write files and directories so that a crash never leaves a half-written result behind.

Everything is first written under a temporary name in the same directory and then renamed,
which is atomic on POSIX file systems. Files and folders get the permissions the user's umask
gives (as `open` and `mkdir` would), not the private 0600 / 0700 of `tempfile`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{unique_suffix()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; it is renamed onto `path` only if the block succeeds.

    For writers that want a file name (safetensors.save_file, matplotlib savefig ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{unique_suffix()}.tmp{path.suffix}")
    try:
        yield tmp
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_creatable(out: str | os.PathLike) -> Path:
    """Refuse an output path whose nearest existing ancestor is a file or cannot be written into.

    Writability is tried, not inferred from permission bits (root passes `os.access` on read-only
    mounts and on /proc): a temporary file is created in that ancestor and removed at once.
    """
    out = Path(out)
    existing = out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {out}: {existing} is a file, not a directory; choose another output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".evoprune-probe-", dir=existing)
    except OSError as e:
        raise UserError(f"cannot write {out}: {existing} is not writable ({e.strerror}); choose another output "
                        "path") from None
    os.close(fd)
    os.unlink(probe)
    return out


def check_output_dir(out: str | os.PathLike, force: bool) -> Path:
    """Refuse to reuse an existing, non-empty output directory unless `force` is set, or a path that cannot be made."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    if not out.exists():
        check_creatable(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"output directory {out} already exists; pass --force to overwrite it")
    return out


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it onto `out` only when complete.

    With `force`, an existing `out` is replaced (only after the new one is complete). Without
    it, an existing non-empty `out` is refused before any work starts.
    """
    out = check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{unique_suffix()}.partial")
    tmp.mkdir()
    try:
        yield tmp
        follow_umask(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old.{unique_suffix()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def umask() -> int:
    """The process's umask (read without changing it where Linux reports it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def follow_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the modes `open` / `mkdir` would under the umask.

    Some writers create private files whatever the umask (safetensors' save_file: 0600).
    """
    mask = umask()
    paths = [path] + (sorted(path.rglob("*")) if path.is_dir() else [])
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def unique_suffix() -> str:
    """`<pid>-<8 hex>`: the part of every temporary name of this module that `rundir.STAGED` recognizes."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
