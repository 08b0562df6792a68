"""MemoryWatch: peaks per stage from /proc/self/status, repeated stages, no watch, no /proc."""

from __future__ import annotations

import mmap
import sys
import time

import pytest
import torch

from evoprune import memory
from evoprune.memory import MemoryWatch, current_memory, read_status

MB = 2**20


def fresh_anonymous(nbytes: int) -> mmap.mmap:
    """`nbytes` of new anonymous memory, every page written: unlike a tensor, it cannot come from heap
    memory an earlier test freed but the allocator kept (which would not raise the process's figures)."""
    block = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for offset in range(0, nbytes, mmap.PAGESIZE):
        block[offset] = 1
    return block
INTERVAL = 0.01
needs_proc = pytest.mark.skipif(read_status() is None, reason="no /proc/self/status on this system")


def by_stage(watch: MemoryWatch) -> dict[str, dict]:
    return {s["stage"]: s for s in watch.to_dict()["stages"]}


@needs_proc
def test_a_large_tensor_raises_its_stages_anonymous_peak_and_not_the_next():
    with MemoryWatch(interval=INTERVAL) as watch:
        with memory.stage("allocate"):
            big = fresh_anonymous(200 * MB)
            time.sleep(10 * INTERVAL)  # several sampling periods
            big.close()
        with memory.stage("after"):
            time.sleep(5 * INTERVAL)
    stages = by_stage(watch)
    allocate, after = stages["allocate"], stages["after"]
    assert allocate["peak_anon_bytes"] >= allocate["start_anon_bytes"] + 150 * MB
    assert allocate["peak_rss_bytes"] >= allocate["start_rss_bytes"] + 150 * MB
    assert after["peak_anon_bytes"] < allocate["peak_anon_bytes"] - 100 * MB
    summary = watch.to_dict()
    assert summary["peak_anon_bytes"] == allocate["peak_anon_bytes"]
    assert summary["vm_hwm_bytes"] >= summary["peak_rss_bytes"] - 10 * MB  # the kernel's own peak agrees
    assert summary["samples"] > 10 and not watch._thread.is_alive()


@needs_proc
def test_a_stage_shorter_than_the_interval_still_has_figures():
    with MemoryWatch(interval=10.0) as watch, watch.stage("instant"):
        pass
    instant = by_stage(watch)["instant"]
    assert instant["peak_rss_bytes"] > 0 and instant["peak_anon_bytes"] > 0 and instant["peak_file_bytes"] >= 0


@needs_proc
def test_a_repeated_stage_sums_its_time_and_keeps_the_highest_peak():
    with MemoryWatch(interval=INTERVAL) as watch:
        with watch.stage("eval"):
            time.sleep(0.05)
        with watch.stage("other"):
            pass
        with watch.stage("eval"):
            big = fresh_anonymous(100 * MB)
            time.sleep(5 * INTERVAL)
            big.close()
        with watch.stage("eval"), watch.stage("eval"):  # re-entered from inside itself: counted once
            time.sleep(0.05)
    stages = watch.to_dict()["stages"]
    assert [s["stage"] for s in stages] == ["eval", "other"]
    evaluation = stages[0]
    assert 0.15 <= evaluation["seconds"] < 5
    assert evaluation["peak_anon_bytes"] >= evaluation["start_anon_bytes"] + 75 * MB


@needs_proc
def test_nested_stages_each_record_their_own_peaks():
    with MemoryWatch(interval=INTERVAL) as watch:
        with watch.stage("outer"):
            with watch.stage("inner"):
                big = torch.ones(100 * MB // 4)
                time.sleep(5 * INTERVAL)
                del big
    stages = by_stage(watch)
    assert stages["outer"]["peak_anon_bytes"] >= stages["inner"]["peak_anon_bytes"]
    assert stages["outer"]["seconds"] >= stages["inner"]["seconds"]


def test_module_stage_without_a_watch_does_nothing():
    assert memory.active_watch() is None
    with memory.stage("nowhere"):
        value = 1
    assert value == 1 and memory.summary() is None


def test_module_stage_records_into_the_innermost_watch_and_a_stage_survives_an_error():
    with MemoryWatch(interval=INTERVAL) as outer:
        with MemoryWatch(interval=INTERVAL) as inner:
            assert memory.active_watch() is inner
            with pytest.raises(RuntimeError), memory.stage("fails"):
                raise RuntimeError("boom")
        assert memory.active_watch() is outer
    assert memory.active_watch() is None
    assert [s["stage"] for s in inner.to_dict()["stages"]] == ["fails"] and outer.to_dict()["stages"] == []


def test_a_watched_function_runs_under_a_watch():
    @memory.watched
    def run() -> dict:
        with memory.stage("work"):
            pass
        return memory.summary()

    assert [s["stage"] for s in run()["stages"]] == ["work"] and memory.active_watch() is None


def test_without_a_status_file_every_figure_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "STATUS_PATH", tmp_path / "missing")
    assert current_memory() == {"rss_bytes": None, "anon_bytes": None, "file_bytes": None}
    with MemoryWatch(interval=INTERVAL) as watch, watch.stage("load model"):
        pass
    summary = watch.to_dict()
    assert summary["stages"][0]["stage"] == "load model" and summary["stages"][0]["seconds"] >= 0
    assert summary["stages"][0]["peak_rss_bytes"] is None and summary["stages"][0]["peak_anon_bytes"] is None
    assert summary["peak_rss_bytes"] is None and summary["vm_hwm_bytes"] is None
    assert "Not measured" in watch.markdown_table()


def test_the_status_file_is_read_in_bytes(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t   512 kB\n"
                      "RssFile:\t   256 kB\nThreads:\t4\n")
    assert read_status(status) == {"hwm": 2 * MB, "rss": MB, "anon": MB // 2, "file": MB // 4}
    with MemoryWatch(interval=INTERVAL, status_path=status) as watch, watch.stage("a"):
        pass
    summary = watch.to_dict()
    assert summary["stages"][0]["peak_anon_bytes"] == MB // 2 and summary["vm_hwm_bytes"] == 2 * MB


@needs_proc
def test_current_memory_and_the_report_table():
    now = current_memory()
    assert now["rss_bytes"] >= now["anon_bytes"] > 0
    with MemoryWatch(interval=INTERVAL) as watch, watch.stage("database"):
        pass
    table = watch.markdown_table()
    assert "| stage | time (s) | peak RSS (GiB) | peak anonymous (GiB) |" in table
    assert "| database |" in table and "whole run" in table and "VmHWM" in table


@pytest.mark.skipif(sys.platform != "linux", reason="Linux has /proc/self/status")
def test_linux_has_the_status_file():
    assert read_status() is not None
