"""The `evoprune train` run directory: one writer, nothing written by a refused run, changed settings and
corrupt files named in one line, a checkpoint resumed into another directory."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from test_recovery import config, records, weights

from evoprune.errors import UserError
from evoprune.rundir import run_lock
from evoprune.recovery import recover

SHORT = ["train.tokens=512", "train.checkpoint_every=2", "train.eval_every=2"]  # 4 steps, a checkpoint every 2


def short(root, *extra):
    return config(root, *SHORT, *extra)


def one_line(caught) -> str:
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def finished(recovery_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("recovery-rundir") / "finished"
    return recover(short(recovery_inputs), out, progress=False)


@pytest.fixture(scope="module")
def stopped(recovery_inputs, tmp_path_factory):
    """Killed after step 3: its latest checkpoint is step 2 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("recovery-rundir") / "stopped"
    recover(short(recovery_inputs), out, progress=False, stop_after_steps=3)
    return out


@pytest.fixture
def stopped_copy(stopped, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    return out


def test_a_second_writer_is_refused_naming_the_first_ones_pid(recovery_inputs, tmp_path):
    out = tmp_path / "run"
    with run_lock(out, "evoprune train (the first run)"):
        with pytest.raises(UserError, match=f"pid {os.getpid()}: evoprune train \\(the first run\\)"):
            recover(short(recovery_inputs), out, progress=False)
    assert not out.exists()


def test_a_refused_run_leaves_nothing_and_force_keeps_the_old_run(recovery_inputs, stopped_copy, tmp_path):
    bad_lora = ["train.lora=true", "train.lora_targets=[q_proj,c_attn]"]
    with pytest.raises(UserError, match="c_attn"):
        recover(short(recovery_inputs, *bad_lora), tmp_path / "new", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # neither `new` nor a lock file
    before = sorted(p.relative_to(stopped_copy) for p in stopped_copy.rglob("*"))
    with pytest.raises(UserError, match="c_attn"):
        recover(short(recovery_inputs, *bad_lora), stopped_copy, force=True, progress=False)
    assert sorted(p.relative_to(stopped_copy) for p in stopped_copy.rglob("*")) == before


def test_changed_settings_are_named_each_with_old_and_new(recovery_inputs, stopped_copy):
    with pytest.raises(UserError, match=r"\(train\.lr: 0\.003 -> 0\.001, train\.warmup_steps: 2 -> 3\)") as caught:
        recover(short(recovery_inputs, "train.lr=0.001", "train.warmup_steps=3"), stopped_copy, progress=False)
    assert "--force" in one_line(caught)
    recover(short(recovery_inputs, "train.eval_every=1"), stopped_copy, progress=False, stop_after_steps=1)
    assert [r["step"] for r in records(stopped_copy)] == [0, 1, 2, 3]  # logging frequencies may change


def test_a_finished_checkpoint_into_a_new_directory_is_refused_leaving_nothing(recovery_inputs, finished, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(UserError, match="step 4, the end of this run's 4 steps: nothing is left to train") as caught:
        recover(short(recovery_inputs), out, progress=False, resume_from=finished / "checkpoints" / "step-0000004")
    one_line(caught)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_resumed_into_a_new_directory_reaches_the_same_weights(recovery_inputs, finished, stopped,
                                                                            tmp_path):
    out = recover(short(recovery_inputs), tmp_path / "new", progress=False,
                  resume_from=stopped / "checkpoints" / "step-0000002")
    rows = records(out)
    assert [r["step"] for r in rows] == [2, 3, 4] and "eval_loss" in rows[0]  # the curve starts at the checkpoint
    assert rows[0]["eval_loss"] == pytest.approx(records(finished)[2]["eval_loss"], rel=1e-6)
    wa, wb = weights(finished), weights(out)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)
    assert "resumed from" in (out / "report.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_a_truncated_run_file_is_one_line_naming_it_and_force(recovery_inputs, stopped_copy):
    path = stopped_copy / "train_run.json"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(UserError) as caught:
        recover(short(recovery_inputs), stopped_copy, progress=False)
    message = one_line(caught)
    assert str(path) in message and "corrupt" in message and "--force" in message
    recover(short(recovery_inputs), stopped_copy, force=True, progress=False, stop_after_steps=1)
    assert [r["step"] for r in records(stopped_copy)] == [0, 1]


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_a_truncated_checkpoint_file_is_one_line_naming_it_and_force(recovery_inputs, stopped_copy, name):
    path = stopped_copy / "checkpoints" / "step-0000002" / name
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(UserError) as caught:
        recover(short(recovery_inputs), stopped_copy, progress=False)
    message = one_line(caught)
    assert str(path) in message and "truncated" in message and "--force" in message


def test_a_missing_checkpoint_file_is_one_line_naming_the_checkpoint(recovery_inputs, stopped_copy):
    checkpoint = stopped_copy / "checkpoints" / "step-0000002"
    (checkpoint / "optimizer.bin").unlink()
    with pytest.raises(UserError, match="cannot load checkpoint") as caught:
        recover(short(recovery_inputs), stopped_copy, progress=False)
    assert str(checkpoint) in one_line(caught)


def test_a_corrupt_latest_checkpoint_pointer_is_one_line_not_a_silent_restart(recovery_inputs, stopped_copy):
    (stopped_copy / "checkpoints" / "latest.json").write_text('{"checkpo')
    with pytest.raises(UserError) as caught:
        recover(short(recovery_inputs), stopped_copy, progress=False)
    assert "latest.json is corrupt" in one_line(caught) and "--force" in one_line(caught)


def test_a_run_killed_after_its_export_finishes_on_rerun_and_a_finished_one_is_refused(recovery_inputs, finished,
                                                                                      tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "report.md").unlink()  # killed after exporting model/ and writing metrics, before the report
    (out / "metrics.json").unlink()
    recover(short(recovery_inputs), out, progress=False)
    assert (out / "report.md").is_file()
    assert records(out) == records(finished)
    wa, wb = weights(finished), weights(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == json.loads((finished / "metrics.json").read_text())["steps"]
    with pytest.raises(UserError, match="holds a finished training run"):
        recover(short(recovery_inputs), out, progress=False)
