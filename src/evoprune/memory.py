"""What a run cost in memory: peak resident and anonymous memory per named stage, sampled from /proc.

A `MemoryWatch` wraps a whole run; a daemon thread reads `/proc/self/status` every few tens of
milliseconds, and every sample raises the peaks of the stages open at that moment. Library code
marks stages without holding the watch: `memory.stage("database")` records into the innermost
active watch and does nothing when none is running.

    with MemoryWatch() as watch:
        with memory.stage("load model"):
            ...
        metrics["memory"] = watch.to_dict()

RSS counts every resident page; anonymous memory (`RssAnon`) is the heap: tensors, activations,
caches. The rest is file-backed (`RssFile`), e.g. memory-mapped safetensors, which the kernel can
drop under pressure. Where `/proc/self/status` does not exist (macOS, Windows) every figure is None.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

STATUS_PATH = Path("/proc/self/status")
MEMINFO = Path("/proc/meminfo")
AUTO_FRACTION = 0.5  # eval.streamed and model.bounded = auto: when the weights take more than this of MemAvailable
DEFAULT_INTERVAL = 0.025  # seconds between samples: short enough to catch a transient peak, cheap to read
_FIELDS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "hwm"}
_ACTIVE: list[MemoryWatch] = []  # running watches, innermost last; `stage()` records into the last one


def read_status(path: Path | None = None) -> dict[str, int] | None:
    """VmRSS, RssAnon, RssFile and VmHWM in bytes, as `rss`, `anon`, `file`, `hwm`; None when unreadable."""
    try:
        text = (path or STATUS_PATH).read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in _FIELDS:
            number, *unit = rest.split()
            values[_FIELDS[key]] = int(number) * (1024 if unit == ["kB"] else 1)
    return values or None


def mem_available(path: Path | None = None) -> int | None:
    """MemAvailable in bytes, or None where /proc/meminfo does not exist (macOS, Windows) or lacks it."""
    try:
        text = (path or MEMINFO).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "MemAvailable":
            number, *unit = rest.split()
            return int(number) * (1024 if unit == ["kB"] else 1)
    return None


def current_memory() -> dict[str, int | None]:
    """This process's resident (`rss_bytes`), anonymous and file-backed memory now; None where unknown."""
    sample = read_status() or {}
    return {f"{name}_bytes": sample.get(name) for name in ("rss", "anon", "file")}


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass
class StageMemory:
    """One named stage: time spent in it (summed over its entries), peaks, and memory when first entered."""

    name: str
    seconds: float = 0.0
    peak_rss: int | None = None
    peak_anon: int | None = None
    peak_file: int | None = None
    start_rss: int | None = None
    start_anon: int | None = None
    entered: float | None = None  # perf_counter of the open entry; None while closed

    def observe(self, sample: dict[str, int]) -> None:
        self.peak_rss = _max(self.peak_rss, sample.get("rss"))
        self.peak_anon = _max(self.peak_anon, sample.get("anon"))
        self.peak_file = _max(self.peak_file, sample.get("file"))

    def to_dict(self, now: float) -> dict:
        open_seconds = 0.0 if self.entered is None else now - self.entered
        return {"stage": self.name, "seconds": round(self.seconds + open_seconds, 3),
                "peak_rss_bytes": self.peak_rss, "peak_anon_bytes": self.peak_anon,
                "peak_file_bytes": self.peak_file, "start_rss_bytes": self.start_rss,
                "start_anon_bytes": self.start_anon}


class MemoryWatch:
    """Samples this process's memory on a daemon thread and keeps the peaks per named stage.

    Args:
        interval: seconds between samples. Stages also take a sample when entered and left, so a
            stage shorter than the interval still has figures.
        status_path: the file to read (default `/proc/self/status`); tests point it elsewhere.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, status_path: Path | None = None):
        self.interval = interval
        self.status_path = status_path
        self.stages: dict[str, StageMemory] = {}  # in order of first entry
        self.run = StageMemory("whole run")
        self.samples = 0
        self.vm_hwm: int | None = None
        self._open: list[StageMemory] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryWatch:
        self.run.entered = time.perf_counter()
        first = self.sample()
        if first is not None:
            self.run.start_rss, self.run.start_anon = first.get("rss"), first.get("anon")
            self._thread = threading.Thread(target=self._sample_until_stopped, name="evoprune-memory", daemon=True)
            self._thread.start()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        last = self.sample()
        self.vm_hwm = None if last is None else last.get("hwm")
        self.run.seconds += time.perf_counter() - self.run.entered
        self.run.entered = None
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def sample(self) -> dict[str, int] | None:
        """Read the status file once and raise the peaks of the run and of every open stage."""
        sample = read_status(self.status_path)
        if sample is not None:
            with self._lock:
                self.samples += 1
                for record in (self.run, *self._open):
                    record.observe(sample)
        return sample

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Mark the code inside as stage `name`; entering a name again adds to its time and peaks.

        A stage already open under the same name (re-entered from inside itself) is not counted twice.
        """
        with self._lock:
            record = self.stages.setdefault(name, StageMemory(name))
            if record.entered is not None:
                record = None
            else:
                record.entered = time.perf_counter()
                self._open.append(record)
        if record is None:
            yield
            return
        first = self.sample()
        if first is not None and record.start_rss is None:
            record.start_rss, record.start_anon = first.get("rss"), first.get("anon")
        try:
            yield
        finally:
            self.sample()
            with self._lock:
                record.seconds += time.perf_counter() - record.entered
                record.entered = None
                self._open.remove(record)

    def to_dict(self) -> dict:
        """The per-stage figures and the run's peaks (so far, when called before the watch ends), in bytes."""
        now = time.perf_counter()
        hwm = self.vm_hwm
        if self.run.entered is not None:  # still running: the process's peak so far
            hwm = (read_status(self.status_path) or {}).get("hwm")
        with self._lock:
            run = self.run.to_dict(now)
            return {"stages": [s.to_dict(now) for s in self.stages.values()], "seconds": run["seconds"],
                    "peak_rss_bytes": run["peak_rss_bytes"], "peak_anon_bytes": run["peak_anon_bytes"],
                    "peak_file_bytes": run["peak_file_bytes"], "start_anon_bytes": run["start_anon_bytes"],
                    "vm_hwm_bytes": hwm,
                    "sample_interval_s": self.interval, "samples": self.samples}

    def markdown_table(self) -> str:
        """The per-stage table of `memory_section`."""
        return memory_section(self.to_dict())


def watched(run: Callable) -> Callable:
    """Decorate a run so that every call of it happens under a fresh `MemoryWatch` (read by `summary()`)."""

    @functools.wraps(run)
    def watching(*args, **kwargs):
        with MemoryWatch():
            return run(*args, **kwargs)

    return watching


def active_watch() -> MemoryWatch | None:
    """The innermost running `MemoryWatch`, or None."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """`MemoryWatch.stage` on the active watch; does nothing when no watch is running."""
    watch = active_watch()
    if watch is None:
        yield
        return
    with watch.stage(name):
        yield


def summary() -> dict | None:
    """The active watch's `to_dict()`, or None when no watch is running."""
    watch = active_watch()
    return None if watch is None else watch.to_dict()


def memory_section(memory: dict) -> str:
    """report.md's Memory section: a table of time, peak RSS and peak anonymous memory per stage (GiB)."""
    from .report import markdown_table

    if memory["peak_rss_bytes"] is None:
        return "Not measured: this system has no `/proc/self/status`.\n"
    whole = {"stage": "**whole run**", "seconds": memory["seconds"], "peak_rss_bytes": memory["peak_rss_bytes"],
             "peak_anon_bytes": memory["peak_anon_bytes"]}
    rows = [{"stage": s["stage"], "time (s)": f"{s['seconds']:.1f}", "peak RSS (GiB)": _gib(s["peak_rss_bytes"]),
             "peak anonymous (GiB)": _gib(s["peak_anon_bytes"])} for s in [*memory["stages"], whole]]
    hwm = memory.get("vm_hwm_bytes")
    return (markdown_table(rows) + f"\nSampled from `/proc/self/status` every {memory['sample_interval_s'] * 1000:g} "
            "ms and when a stage starts and ends. Anonymous memory is the heap (tensors, activations, caches); the "
            "rest of RSS is file-backed, e.g. memory-mapped weights."
            + ("" if hwm is None else f" The process's own peak RSS (VmHWM, since it started) was {_gib(hwm)} GiB.")
            + "\n")


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f}"
