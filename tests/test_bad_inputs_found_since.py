"""The bad inputs found since the first fault pass: each refused in one line (exit 2), nothing written, and the
leftovers of killed runs swept from inside the run folder."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from test_bad_inputs import FAST, assert_nothing_written, refused, source  # noqa: F401  (fixtures)

DARWIN_FAST = [*FAST, "data.calibration_blocks=4", "data.batch_size=2", "eval.unseen=false", "search.fitness_pool=64",
               "database.num_levels=4", "search.offspring=2", "search.generations=1", "search.train_tokens=[0]",
               "search.fitness_tokens=[32]", "search.survivors=[1]"]


def test_out_under_proc_is_refused_before_work(refused, source):
    line = refused("prune", *source, "--out", "/proc/evoprune-test/run", *FAST)
    assert "cannot write /proc/evoprune-test/run" in line and "/proc is not writable" in line


@pytest.mark.parametrize("fmt", ["gguf", "nemotron-nas"])
def test_export_under_a_file_is_refused(refused, tiny_run_inputs, tmp_path, fmt):
    (tmp_path / "a-file").write_text("x")
    line = refused("export", "--model", tiny_run_inputs / "dense", "--format", fmt, "--out", tmp_path / "a-file" / "sub")
    assert "a-file is a file, not a directory" in line


def test_export_under_a_file_is_refused_before_the_tokenizer_is_read(tmp_path):
    from evoprune.atomic import check_output_dir
    from evoprune.errors import UserError

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="a-file is a file, not a directory"):
        check_output_dir(tmp_path / "a-file" / "sub" / "deeper", force=False)


@pytest.mark.parametrize("budget", ["inf", "1e400", "nan"])
def test_an_infinite_memory_budget_is_refused_before_the_model_loads(refused, source, tmp_path, budget):
    line = refused("darwin", *source, "--max-memory", budget, "--out", tmp_path / "run", *FAST)
    assert "max_memory_gib (--max-memory) must be a positive, finite number of GiB" in line
    assert_nothing_written(tmp_path / "run")


def test_a_params_range_no_random_subnetwork_meets_is_refused_at_once(refused, source, tmp_path):
    line = refused("nas", *source, "--sparsity-range", "0.9995,1", "--pick", "knee", "--out", tmp_path / "run", *FAST,
                   "data.calibration_blocks=2")
    assert "--sparsity-range 0.9995,1 admits none of 1,000 random sub-networks" in line


def test_a_darwin_rerun_with_another_teacher_top_k_is_refused(refused, source, tmp_path, capsys):
    from evoprune.cli import main

    assert main(["darwin", *map(str, source), "--out", str(tmp_path / "run"), *DARWIN_FAST]) == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    line = refused("darwin", *source, "--out", tmp_path / "run", *DARWIN_FAST, "eval.top_k=64")
    assert "other settings" in line and "top_k" in line
    assert (tmp_path / "run" / "config.yaml").read_text() == config


def test_a_model_without_a_tokenizer_is_one_line_before_its_weights_load(refused, tiny_run_inputs, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_run_inputs / "dense" / name, folder / name)
    line = refused("prune", "--model", folder, "--data", tiny_run_inputs / "corpus.txt", "--out", tmp_path / "run",
                   *FAST)
    assert "has no usable tokenizer" in line
    assert_nothing_written(tmp_path / "run")


def test_an_evoprune_model_type_with_foreign_code_needs_trust(refused, tiny_run_inputs, tmp_path, capsys):
    from evoprune.cli import main

    common = ["--data", str(tiny_run_inputs / "corpus.txt"), *FAST, "data.calibration_blocks=4"]
    assert main(["prune", "--model", str(tiny_run_inputs / "dense"), "--sparsity", "0.4", "--out",
                 str(tmp_path / "pruned"), *common]) == 0
    capsys.readouterr()
    folder = tmp_path / "pruned" / "model"
    config = json.loads((folder / "config.json").read_text())
    if "auto_map" not in config:  # a uniform result is a stock checkpoint: give it an evoprune type by hand
        config.update(model_type="evoprune_llama", auto_map={"AutoConfig": "configuration_evoprune.EvopruneLlamaConfig"})
    config["auto_map"]["AutoModelForCausalLM"] = "evil.Model"
    (folder / "config.json").write_text(json.dumps(config))
    line = refused("eval", "--model", folder, "--out", tmp_path / "eval", *common)
    assert "says it is an evoprune model" in line and "evil.Model" in line and "--trust-remote-code" in line


def test_written_weights_follow_the_umask(source, tmp_path):
    from evoprune.cli import main

    previous = os.umask(0o027)
    try:
        assert main(["prune", *map(str, source), "--sparsity", "0.4", "--out", str(tmp_path / "run"), *FAST,
                     "data.calibration_blocks=4"]) == 0
    finally:
        os.umask(previous)
    weights = list((tmp_path / "run" / "model").glob("*.safetensors"))
    assert weights and all(p.stat().st_mode & 0o777 == 0o640 for p in weights)
    assert (tmp_path / "run" / "model").stat().st_mode & 0o777 == 0o750


def test_leftovers_of_a_killed_run_inside_its_folder_are_swept_on_rerun(tmp_path):
    from evoprune.rundir import run_lock

    out = tmp_path / "run"
    (out / "search").mkdir(parents=True)
    left = [out / ".model.4242-deadbeef.partial", out / ".kept_per_layer.png.4242-0badf00d.tmp.png",
            out / "search" / ".state.json.4242-12345678.tmp"]
    left[0].mkdir()
    (left[0] / "model.safetensors").write_bytes(b"half")
    left[1].write_bytes(b"half")
    left[2].write_text("{")
    kept = [out / "metrics.json", out / ".hidden-but-ours"]
    for path in kept:
        path.write_text("{}")
    with run_lock(out):
        pass
    assert not any(p.exists() for p in left)
    assert all(p.exists() for p in kept)


@pytest.mark.parametrize("command", [["export", "--format", "gguf"], ["fetch-assets"]])
def test_commands_without_a_config_refuse_config_fields(refused, tiny_run_inputs, tmp_path, command):
    extra = ["--model", tiny_run_inputs / "dense", "--out", tmp_path / "x"] if command[0] == "export" else []
    line = refused(*command, *extra, "data.seq_len=64")
    assert f"evoprune {command[0]} takes no config fields (got data.seq_len=64)" in line
    assert not (tmp_path / "x").exists()
