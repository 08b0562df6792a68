"""Every bad input to the `evoprune` command: one line naming the problem and the fix, exit 2, nothing written."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

import pytest
import torch
from transformers.utils import logging as hf_logging

from evoprune.cli import main, parse_args
from evoprune.config import load_config

FAST = ["data.seq_len=16", "data.eval_blocks=2", "eval.latency=false", "--quiet"]


@pytest.fixture
def refused(capsys, caplog, monkeypatch):
    """Run the CLI in-process; check exit 2 and a single `evoprune: error:` line; return that line.

    transformers' own handler writes to the stderr it found at import, and evoprune's log records go
    to pytest's handler: both are routed into what is checked, so a warning printed beside the error
    counts as a second line.
    """
    hf_logging._configure_library_root_logger()

    def run(*argv) -> str:
        monkeypatch.setattr(hf_logging._default_handler, "stream", sys.stderr)
        caplog.clear()
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err + "".join(f"{r.levelname} {r.name}: {r.getMessage()}\n"
                                                for r in caplog.records if r.levelno >= logging.WARNING)
        assert code == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("evoprune: error: "), err
        assert "Traceback" not in err
        return lines[0]
    return run


@pytest.fixture
def source(tiny_run_inputs):
    return ["--model", tiny_run_inputs / "dense", "--data", tiny_run_inputs / "corpus.txt"]


def assert_nothing_written(out) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), list(out.parent.glob(f".{out.name}*"))


def test_config_file_not_utf8(refused, source, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("data:\n  source: caf\xe9.txt\n".encode("latin-1"))
    line = refused("prune", *source, "--config", config, "--out", tmp_path / "run", *FAST)
    assert "not UTF-8" in line and "latin1.yaml" in line and "save it as UTF-8" in line
    assert_nothing_written(tmp_path / "run")


def test_config_file_malformed_yaml(refused, source, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  source: x\n dtype: [\n")
    line = refused("prune", *source, "--config", config, "--out", tmp_path / "run", *FAST)
    assert "broken.yaml is not valid YAML" in line and "line 3" in line
    assert_nothing_written(tmp_path / "run")


def test_flag_of_the_wrong_type_is_one_line_not_a_usage_dump(refused, source, tmp_path):
    line = refused("prune", *source, "--sparsity", "abc", "--out", tmp_path / "run", *FAST)
    assert "--sparsity" in line and "'abc'" in line and "evoprune prune --help" in line
    assert_nothing_written(tmp_path / "run")


def test_unknown_flag_is_one_line(refused, source, tmp_path):
    line = refused("prune", *source, "--sparsty", "0.5", "--out", tmp_path / "run", *FAST)
    assert "unrecognized arguments: --sparsty" in line


def test_section_given_a_value(refused, source, tmp_path):
    line = refused("prune", *source, "data=3", "--out", tmp_path / "run", *FAST)
    assert "data is a section" in line and "data.FIELD=VALUE" in line
    assert_nothing_written(tmp_path / "run")


def test_top_level_key_of_the_wrong_type(refused, source, tmp_path):
    line = refused("prune", *source, "seed=abc", "--out", tmp_path / "run", *FAST)
    assert "seed must be int, got 'abc'" in line
    assert_nothing_written(tmp_path / "run")


def test_top_level_key_is_an_override_like_any_other():
    args = parse_args(["seed=1", "prune", "--out", "run", "seed=3", "data.seq_len=64"])
    assert args.overrides == ["seed=1", "seed=3", "data.seq_len=64"]
    assert load_config(None, args.overrides).seed == 3


def test_flag_value_that_looks_like_an_override_stays_the_flags():
    args = parse_args(["slice", "--spec", "a.b=c.json", "--out", "x=y", "--model", "seed=3"])
    assert (args.spec, args.out, args.model, args.overrides) == ("a.b=c.json", "x=y", "seed=3", [])


def test_help_still_works(capsys):
    assert main(["prune", "--help"]) == 0
    assert "--sparsity" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(refused, source, tmp_path):
    line = refused("prune", *source, "--device", "cuda", "--out", tmp_path / "run", *FAST)
    assert "device cuda is not available" in line and "--device cpu" in line
    assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize("command", ["prune", "darwin", "nas", "eval", "train"])
def test_unknown_device(refused, source, tmp_path, command):
    fast = [a for a in FAST if command != "train" or not a.startswith("eval.")]  # train has no eval.latency
    line = refused(command, *source, "--device", "tpu", "--out", tmp_path / "run", *fast)
    assert "model.device (--device) must be cpu, cuda, cuda:N or mps, got 'tpu'" in line
    assert_nothing_written(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (0555) directory")
def test_out_in_read_only_directory(refused, source, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        line = refused("prune", *source, "--out", parent / "run", *FAST)
    finally:
        parent.chmod(0o755)
    assert "not writable" in line and "--out" in line
    assert_nothing_written(parent / "run")


def test_out_under_a_file(refused, source, tmp_path):
    """The read-only case that holds for root as well: the parent of --out is a file."""
    (tmp_path / "notes.txt").write_text("mine")
    line = refused("eval", *source, "--out", tmp_path / "notes.txt" / "run", *FAST)
    assert "notes.txt is a file" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["darwin", "nas"])
def test_out_that_is_an_existing_file(refused, source, tmp_path, command):
    out = tmp_path / "result"
    out.write_text("mine")
    line = refused(command, *source, "--out", out, *FAST)
    assert "exists and is not a directory" in line and "--out" in line
    assert out.read_text() == "mine"


def test_negative_num_fewshot(refused, source, tmp_path):
    line = refused("eval", *source, "--num-fewshot", "-1", "--out", tmp_path / "run", *FAST)
    assert "eval.num_fewshot (--num-fewshot) must be 0 or more, got -1" in line
    assert_nothing_written(tmp_path / "run")


def test_weights_do_not_match_config(refused, tiny_run_inputs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run_inputs / "dense", model)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] += 16
    (model / "config.json").write_text(json.dumps(config))
    line = refused("prune", "--model", model, "--data", tiny_run_inputs / "corpus.txt", "--out", tmp_path / "run",
                   *FAST)
    assert "do not match its config.json" in line and "mlp" in line and "put back the config.json" in line
    assert_nothing_written(tmp_path / "run")


def test_unsupported_architecture(refused, tiny_run_inputs, tmp_path):
    model = tmp_path / "gpt2"
    model.mkdir()
    # Written by hand, like GPT-2's own: its special tokens lie outside this vocabulary, which transformers
    # warns about when the CLI reads it (a warning printed beside the error would be a second line).
    (model / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 1, "n_embd": 16, "n_head": 2,
        "vocab_size": 53, "bos_token_id": 50256, "eos_token_id": 50256}))
    line = refused("prune", "--model", model, "--data", tiny_run_inputs / "corpus.txt", "--out", tmp_path / "run",
                   *FAST)
    assert "unsupported architecture 'gpt2' (GPT2LMHeadModel)" in line and "supported: gemma2, gemma3_text, llama" in line
    assert_nothing_written(tmp_path / "run")


def test_tokenizer_that_needs_remote_code(refused, tiny_run_inputs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run_inputs / "dense", model)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    line = refused("eval", "--model", model, "--data", tiny_run_inputs / "corpus.txt", "--out", tmp_path / "run",
                   *FAST)
    assert "tokenizer" in line and "needs its own code" in line and "--trust-remote-code" in line
    assert_nothing_written(tmp_path / "run")


def test_an_unknown_compute_dtype_is_one_line(refused, source, tmp_path):
    line = refused("eval", *source, "--out", tmp_path / "e", "model.compute_dtype=int8", *FAST)
    assert "compute_dtype" in line
    assert_nothing_written(tmp_path / "e")


def test_bfloat16_compute_on_a_gpu_without_it_names_the_option(monkeypatch):
    from evoprune.errors import UserError
    from evoprune.models import check_compute_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UserError, match="model.compute_dtype=float16"):
        check_compute_dtype(torch.bfloat16, "cuda:0")
    check_compute_dtype(torch.float32, "cuda:0")
