"""The darwin run directory: one writer, nothing written by a refused run, changed settings and corrupt files
named in one line."""

from __future__ import annotations

import os
import shutil

import pytest
from darwinlm.test_pipeline import TINY, config

from evoprune.darwinlm import pipeline as darwin
from evoprune.cli import main
from evoprune.errors import UserError
from evoprune.models import load_source
from evoprune.rundir import read_run_json, run_lock


def argv(root, out, *extra):
    return ["darwin", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out),
            "--quiet", *[t for t in TINY if not t.startswith("prune.")], *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def stopped_run(tiny_run_inputs, tmp_path_factory):
    """A darwin run killed after its first generation (copy it before changing it)."""
    out = tmp_path_factory.mktemp("darwin-rundir") / "stopped"
    darwin.run(config(tiny_run_inputs), out, progress=False, stop_after=1)
    return out


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    return out


def test_a_second_writer_is_refused_naming_the_first_ones_pid(tiny_run_inputs, tmp_path):
    out = tmp_path / "run"
    with run_lock(out, "evoprune darwin (the first run)"):
        with pytest.raises(UserError, match=f"pid {os.getpid()}: evoprune darwin \\(the first run\\)"):
            darwin.run(config(tiny_run_inputs), out, progress=False, stop_after=0)
    assert not out.exists()
    darwin.run(config(tiny_run_inputs), out, progress=False, stop_after=0)  # the lock is gone with its holder
    assert (out / "search" / "state.json").is_file()


@pytest.mark.parametrize("target, reason", [(["--target-params", "999999999"], "not smaller than the model"),
                                            (["--sparsity", "0.999"], "out of reach"),
                                            (["--target-params", "10"], "below the embeddings")])
def test_an_impossible_target_leaves_nothing_behind(tiny_run_inputs, tmp_path, capsys, target, reason):
    out = tmp_path / "run"
    assert main(argv(tiny_run_inputs, out, *target)) == 2
    assert reason in one_line_error(capsys)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no lock file either


def test_force_keeps_the_old_run_when_the_new_one_is_refused(tiny_run_inputs, run_copy, capsys):
    before = (run_copy / "search" / "state.json").read_bytes()
    assert main(argv(tiny_run_inputs, run_copy, "--force", "--target-params", "999999999")) == 2
    assert "not smaller than" in one_line_error(capsys)
    assert (run_copy / "search" / "state.json").read_bytes() == before


def test_the_planned_costs_are_the_built_databases(tiny_run_inputs, stopped_run):
    cfg = config(tiny_run_inputs)
    dense = load_source(cfg)
    db = darwin.build_database(cfg, dense, stopped_run / "database", progress=False)
    shape = dense.adapter.shape(dense.model)
    for metric in ("params", "flops"):
        assert darwin.planned_cost_table(shape, darwin.database_settings(cfg), metric).costs == \
            darwin.cost_table(db, metric).costs


def test_changed_settings_are_named_each_with_old_and_new(tiny_run_inputs, stopped_run):
    with pytest.raises(UserError, match=r"search\.generations: 3 -> 5, search\.offspring: 3 -> 4\)"):
        darwin.run(config(tiny_run_inputs, "search.offspring=4", "search.generations=5"), stopped_run, progress=False)


def test_another_dtype_is_refused_as_model_dtype(tiny_run_inputs, stopped_run, capsys):
    assert main(argv(tiny_run_inputs, stopped_run, "--sparsity", "0.4", "--dtype", "bfloat16")) == 2
    err = one_line_error(capsys)
    assert "model.dtype: 'float32' -> 'bfloat16'" in err and "different model" not in err


@pytest.mark.parametrize("name", [darwin.RUN_MARKER, "search/state.json"])
def test_a_truncated_run_file_is_one_line_naming_it_and_force(tiny_run_inputs, run_copy, capsys, name):
    path = run_copy / name
    path.write_bytes(path.read_bytes()[:25])
    assert main(argv(tiny_run_inputs, run_copy, "--sparsity", "0.4")) == 2
    err = one_line_error(capsys)
    assert str(path) in err and "corrupt" in err and "--force" in err
    darwin.run(config(tiny_run_inputs), run_copy, force=True, progress=False, stop_after=0)
    assert read_run_json(run_copy / darwin.RUN_MARKER) == darwin.search_config(config(tiny_run_inputs))
