"""`evoprune nas` end to end on a tiny model: pareto.csv, a pick exported as a loadable HF checkpoint of exactly
the picked size, resume, bad input."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from evoprune.cli import main

TINY = ["data.seq_len=16", "data.calibration_blocks=2", "data.eval_blocks=2", "data.batch_size=2",
        "eval.prompt_len=8", "eval.new_tokens=2", "eval.repeats=1"]


def argv(root, out, *extra):
    return ["nas", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out), "--quiet",
            "--budget", "6", "--sampler", "random", *extra, *TINY]


def test_nas_writes_the_front_and_exports_the_pick(tiny_run_inputs, tmp_path, capsys):
    assert main(argv(tiny_run_inputs, tmp_path / "n", "--pick", "params<=0.9")) == 0
    front = json.loads((tmp_path / "n" / "pareto.json").read_text())
    assert front["front"] and (tmp_path / "n" / "pareto.csv").read_text().startswith("trial,kl,params")
    picked = next(r for r in front["front"] if r["trial"] == front["picked_trial"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "n" / "picks" / "params-le-0.9", trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == picked["params"]  # the HF checkpoint is the pick, exactly
    assert len(model.model.layers) == picked["layers"]
    assert torch.isfinite(model(input_ids=torch.tensor([[3, 4, 5]])).logits).all()
    assert main(argv(tiny_run_inputs, tmp_path / "n", "--pick", "params<=0.9")) == 0  # resumes, no new trials
    capsys.readouterr()
    assert main(argv(tiny_run_inputs, tmp_path / "n", "--objectives", "kl,speed")) == 2
    assert "unknown: speed" in capsys.readouterr().err
    assert main(argv(tiny_run_inputs, tmp_path / "n2", "--pick", "params<=0.01")) == 2
    err = capsys.readouterr().err.strip()
    assert "no configuration on the front meets params<=0.01" in err and len(err.splitlines()) == 1


def test_params_range_bounds_the_front_and_bad_ranges_are_one_line(tiny_run_inputs, tmp_path, capsys):
    assert main(argv(tiny_run_inputs, tmp_path / "n", "--params-range", "0.7,1")) == 0
    front = json.loads((tmp_path / "n" / "pareto.json").read_text())["front"]
    dense = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "dense")
    total = sum(p.numel() for p in dense.parameters())
    assert front and all(0.7 * total <= r["params"] <= total for r in front)
    capsys.readouterr()
    for bad, message in (("0.9,0.5", "needs 0 <= low < high"), ("half", "two fractions"),
                         ("0,0.0001", "no configuration has between")):
        assert main(argv(tiny_run_inputs, tmp_path / bad.replace(",", "_"), "--params-range", bad)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not (tmp_path / bad.replace(",", "_")).exists()
