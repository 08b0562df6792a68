"""`evoprune eval` with a latency sweep: metrics rows per workload and model, report table and plot."""

from __future__ import annotations

import json

from evoprune.cli import main

TINY = ["data.seq_len=128", "data.calibration_blocks=2", "data.eval_blocks=2", "eval.repeats=1", "eval.warmup=0",
        "eval.new_tokens=2", "--quiet"]


def test_eval_writes_sweep_table_and_plot(tiny_run_inputs, tmp_path, capsys):
    root, out = tiny_run_inputs, tmp_path / "eval"
    code = main(["eval", "--model", str(root / "dense"), "--teacher", str(root / "dense"), "--data",
                 str(root / "corpus.txt"), "--out", str(out), "eval.latency_batch_sizes=[1,2]",
                 "eval.latency_prompt_lens=[8,4]", *TINY])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "metrics.json").read_text())["latency_sweep"]
    assert [(r["batch_size"], r["prompt_len"], r["model"]) for r in rows] == [
        (b, p, m) for p in (4, 8) for b in (1, 2) for m in ("teacher", "model")]
    assert all(r["kv_cache_bytes"] > 0 and r["memory_bytes"] == r["weights_bytes"] + r["kv_cache_bytes"]
               for r in rows)
    report = (out / "report.md").read_text()
    assert "## Latency sweep" in report and "![latency sweep](latency_sweep.png)" in report
    sweep = report.split("## Latency sweep")[1].split("\n## ")[0]  # up to the next section
    sweep_lines = [line for line in sweep.splitlines() if line.startswith("| ")]
    assert len(sweep_lines) == 1 + 8  # header, 4 workloads x 2 models
    assert (out / "latency_sweep.png").stat().st_size > 0


def test_eval_without_sweep_settings_has_no_sweep(tiny_run_inputs, tmp_path, capsys):
    root, out = tiny_run_inputs, tmp_path / "eval"
    assert main(["eval", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out),
                 *TINY]) == 0
    assert "latency_sweep" not in json.loads((out / "metrics.json").read_text())
    assert "Latency sweep" not in (out / "report.md").read_text()


def test_sweep_longer_than_the_model_is_one_line_exit_2(tiny_run_inputs, tmp_path, capsys):
    root, out = tiny_run_inputs, tmp_path / "eval"
    code = main(["eval", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out),
                 "eval.latency_prompt_lens=[8,255]", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert "257 exceeds the 256 positions" in err and "eval.latency_prompt_lens" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
