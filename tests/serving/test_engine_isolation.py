"""The code paths a CI machine with AMX takes, forced here: repacking off where AMX is found, and a
llama.cpp crash (injected as a real signal in the engine child) ending `evoprune eval` and the latency
table in one line, with a darwin run that keeps its database and resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llama.cpp engine) is not installed")

from evoprune.darwinlm import pipeline as darwin  # noqa: E402
from evoprune.cli import main  # noqa: E402
from evoprune.serving import engine_process, llamacpp  # noqa: E402
from evoprune.serving.engine_process import FAULT_ENV, EngineCrashed  # noqa: E402
from evoprune.serving.gguf_export import export_gguf  # noqa: E402
from evoprune.serving.llamacpp import LlamaCppModel  # noqa: E402

from .conftest import eval_ids  # noqa: E402
from .test_llamacpp_latency import llamacpp_darwin_config  # noqa: E402

AMX_HERE = engine_process.cpu_has_amx()


@pytest.fixture(scope="module")
def q8_file(gguf_folders, tmp_path_factory) -> Path:
    return export_gguf(gguf_folders["llama-hetero"], tmp_path_factory.mktemp("q8") / "gguf", quant="q8_0").path


def test_on_a_cpu_with_amx_quantized_models_load_without_repacking(q8_file, monkeypatch):
    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: True)
    with LlamaCppModel(q8_file, n_ctx=64) as model:
        assert model.repack is False and model.uses_repacking() is False
        without = model.logits(eval_ids())
    if AMX_HERE:
        pytest.skip("repacking on would reach llama.cpp's AMX backend on this CPU")
    with LlamaCppModel(q8_file, n_ctx=64, repack="on") as model:
        assert model.uses_repacking() is True
        with_repacking = model.logits(eval_ids())
    assert np.argmax(without, -1).tolist() == np.argmax(with_repacking, -1).tolist()
    np.testing.assert_allclose(without, with_repacking, atol=5e-2)


def test_repacking_is_on_by_default_without_amx(q8_file, monkeypatch):
    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: False)
    with LlamaCppModel(q8_file, n_ctx=64, repack="off") as model:
        assert model.uses_repacking() is False
    if AMX_HERE:
        pytest.skip("repacking on would reach llama.cpp's AMX backend on this CPU")
    with LlamaCppModel(q8_file, n_ctx=64) as model:
        assert model.uses_repacking() is True


def test_a_crash_while_scoring_is_a_one_line_error(q8_file, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "_logits:SIGSEGV")
    with LlamaCppModel(q8_file, n_ctx=64) as model, pytest.raises(EngineCrashed) as crash:
        model.logits(eval_ids())
    assert "SIGSEGV" in str(crash.value) and str(q8_file) in str(crash.value) and "\n" not in str(crash.value)


def test_eval_whose_engine_crashes_exits_2_in_one_line_and_writes_nothing(q8_file, gguf_folders, tmp_path,
                                                                          monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog hello world numbers 123 456".split()
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(50)) for _ in range(200)))
    monkeypatch.setenv(FAULT_ENV, "_logits:SIGSEGV")
    out = tmp_path / "run"
    code = main(["eval", "--engine", "llamacpp", "--model", str(q8_file), "--tokenizer",
                 str(gguf_folders["llama-hetero"]), "--out", str(out), "--threads", "1", f"data.source={corpus}",
                 "data.seq_len=32", "data.eval_blocks=2", "eval.latency=false", "eval.unseen=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "SIGSEGV" in err[-1] and str(q8_file) in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists() and not list(tmp_path.glob("run*"))


def test_darwin_keeps_its_database_when_the_llamacpp_table_crashes_and_resumes(tiny_run_inputs, tmp_path,
                                                                               monkeypatch):
    cfg = llamacpp_darwin_config(tiny_run_inputs)
    run = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "sample_gguf_calls:SIGSEGV")
    with pytest.raises(EngineCrashed, match="SIGSEGV.*latency table"):
        darwin.run(cfg, run, progress=False)
    index = run / "database" / "index.json"
    assert index.exists() and not (run / "search" / "latency_table.json").exists()
    built = index.stat().st_mtime_ns
    monkeypatch.delenv(FAULT_ENV)
    darwin.run(cfg, run, progress=False)
    assert index.stat().st_mtime_ns == built  # the database was kept, not built again
    assert json.loads((run / "search" / "latency_table.json").read_text())["engine"] == "llamacpp"
    assert (run / "model" / "config.json").exists()
