"""One run directory, one writer: the lock, stale partial folders, the user's umask, resume checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from evoprune.atomic import staged_dir, write_json
from evoprune.cli import main
from evoprune.errors import UserError
from evoprune.rundir import changed_keys, read_run_json, refuse_changed, remove_stale_partials, run_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from evoprune.rundir import run_lock
    with run_lock(sys.argv[1], command="evoprune prune --out held"):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/run until the test ends (then SIGKILLed)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_first(holder):
    out, proc = holder
    with pytest.raises(UserError, match=rf"being written by another process \(pid {proc.pid}: evoprune prune"):
        with run_lock(out):
            pass


def test_the_cli_refuses_a_locked_out_in_one_line_with_status_2(holder, capsys):
    out, proc = holder
    code = main(["prune", "--model", "smollm2-135m", "--sparsity", "0.5", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"pid {proc.pid}" in err
    assert not out.exists()


def test_a_killed_holder_releases_the_lock(holder):
    out, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(out) as locked:
        assert locked == out
    assert not (out.parent / f".{out.name}.lock").exists()


def test_one_lock_at_a_time_and_the_next_run_takes_a_released_one(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(UserError, match="another process"):
            with run_lock(out):
                pass
    with run_lock(out):  # released: the next run takes it
        pass


def test_stale_partial_folders_of_a_killed_run_are_removed_by_the_next(tmp_path):
    out = tmp_path / "run"
    stale = [tmp_path / ".run.123-abcd.partial", tmp_path / ".run.old.77-ffff"]
    for p in stale:
        (p / "model").mkdir(parents=True)
    other = tmp_path / ".runner.1-a.partial"  # another run's name that merely starts alike
    other.mkdir()
    with run_lock(out):
        pass
    assert not any(p.exists() for p in stale)
    assert other.exists()
    assert remove_stale_partials(out) == []


def test_results_get_the_users_umask_not_private_modes(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "run") as tmp:
            write_json(tmp / "metrics.json", {"a": 1})
            (tmp / "model").mkdir()
        os.umask(0o027)
        with staged_dir(tmp_path / "run2") as tmp:
            write_json(tmp / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "run") == 0o755 and mode(tmp_path / "run" / "metrics.json") == 0o644
    assert mode(tmp_path / "run2") == 0o750 and mode(tmp_path / "run2" / "metrics.json") == 0o640


def test_changed_keys_names_every_leaf_that_differs():
    saved = {"data": {"seq_len": 128, "calibration_blocks": 8}, "search": {"offspring": 4, "scales": [1, 2]},
             "seed": 0}
    now = {"data": {"seq_len": 128, "calibration_blocks": 16}, "search": {"offspring": 8, "scales": (1, 2)},
           "seed": 0, "dtype": "bfloat16"}
    assert changed_keys(saved, now) == ["data.calibration_blocks", "dtype", "search.offspring"]
    with pytest.raises(UserError) as e:
        refuse_changed("runs/x", saved, now)
    assert "data.calibration_blocks: 8 -> 16" in str(e.value) and "search.offspring: 4 -> 8" in str(e.value)
    assert "dtype: (unset) -> 'bfloat16'" in str(e.value)
    refuse_changed("runs/x", saved, {**saved, "search": {"offspring": 4, "scales": (1, 2)}})


def test_a_corrupt_run_file_is_named_with_the_way_out(tmp_path):
    path = tmp_path / "darwin_run.json"
    path.write_text('{"model": "smol')
    with pytest.raises(UserError, match=r"darwin_run.json is corrupt .*--force"):
        read_run_json(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="is corrupt"):
        read_run_json(path)


def test_out_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        with run_lock(tmp_path / "file"):
            pass
    with pytest.raises(UserError, match="is a file"):
        with run_lock(tmp_path / "file" / "run"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


class TestResumableRun:
    """The one check / start of every resumable command's run directory."""

    def run_dir(self, tmp_path):
        from evoprune.rundir import ResumableRun

        return ResumableRun(tmp_path / "run", "demo", "demo_run.json")

    def test_absent_or_empty_holds_no_run(self, tmp_path):
        run = self.run_dir(tmp_path)
        assert run.holds_run({"a": 1}) is False
        run.out.mkdir()
        assert run.holds_run({"a": 1}) is False

    def test_started_run_resumes_with_the_same_settings_only(self, tmp_path):
        run = self.run_dir(tmp_path)
        run.start({"a": 1, "b": {"c": [1, 2]}})
        assert run.holds_run({"a": 1, "b": {"c": (1, 2)}}) is True
        with pytest.raises(UserError, match=r"other settings \(b\.c: \[1, 2\] -> \[1, 3\]\)"):
            run.holds_run({"a": 1, "b": {"c": [1, 3]}})
        with pytest.raises(UserError, match="a: "):
            run.holds_run({"b": {"c": [1, 2]}})  # a setting that was dropped counts as changed
        assert run.holds_run({"b": {"c": [1, 2]}}, only_given=True) is True

    def test_foreign_folder_and_corrupt_marker_are_refused(self, tmp_path):
        run = self.run_dir(tmp_path)
        run.out.mkdir()
        (run.out / "notes.txt").write_text("mine")
        with pytest.raises(UserError, match="is not an evoprune demo run; pass --force"):
            run.holds_run({"a": 1})
        run.marker_path.write_text("[1, 2]")
        with pytest.raises(UserError, match="corrupt"):
            run.holds_run({"a": 1})
        run.marker_path.write_text("{not json")
        with pytest.raises(UserError, match="corrupt"):
            run.holds_run({"a": 1})

    def test_force_replaces_only_at_start(self, tmp_path):
        run = self.run_dir(tmp_path)
        run.out.mkdir()
        (run.out / "notes.txt").write_text("mine")
        assert run.holds_run({"a": 1}, force=True) is False
        assert (run.out / "notes.txt").exists()  # checking never removes anything
        run.start({"a": 1}, force=True)
        assert sorted(p.name for p in run.out.iterdir()) == ["demo_run.json"]
        assert run.holds_run({"a": 1}) is True
