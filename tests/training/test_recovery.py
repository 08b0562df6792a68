"""`evoprune train`: DDP equivalence, kill-and-resume, LoRA export, bad input (tiny models, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evoprune_tests import CORPUS_WORDS

from evoprune.cli import main
from evoprune.config import load_config
from evoprune.evaluation.perplexity import mean_nll
from evoprune.models import load_model
from evoprune.data import data_blocks
from evoprune.recovery import RecoveryRunConfig, recover

SRC = str(Path(__file__).resolve().parents[2] / "src")
SETTINGS = ["--seq-len", "32", "--tokens", "1536", "--quiet", "train.batch_size=4", "train.lr=0.003",
            "train.warmup_steps=2", "train.eval_every=4", "train.checkpoint_every=4", "data.eval_blocks=4",
            "data.batch_size=4"]


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(root / "pruned"), "--teacher", str(root / "dense"), "--data",
            str(root / "corpus.txt"), "--out", str(out), *SETTINGS, *extra]


def config(root: Path, *extra: str) -> RecoveryRunConfig:
    return load_config(None, [f"model.source={root / 'pruned'}", f"train.teacher={root / 'dense'}",
                              f"data.source={root / 'corpus.txt'}", "data.seq_len=32", "train.tokens=1536",
                              *[s for s in SETTINGS if "=" in s], *extra], cls=RecoveryRunConfig)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(a: list[dict], b: list[dict], rel: float) -> None:
    """Same steps with a loss (the evaluation-only step 0 has none), and those losses equal within `rel`."""
    la, lb = [r.get("loss") for r in a], [r.get("loss") for r in b]
    assert [v is None for v in la] == [v is None for v in lb]
    assert [v for v in la if v is not None] == pytest.approx([v for v in lb if v is not None], rel=rel)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def straight_run(recovery_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("recovery") / "straight"
    assert main(train_args(recovery_inputs, out)) == 0
    return out


def test_run_writes_model_report_metrics_and_trains(recovery_inputs, straight_run):
    rows = records(straight_run)
    assert [r["step"] for r in rows] == list(range(13))  # step 0: the held-out loss before training
    steps = rows[1:]
    assert [r["tokens"] for r in steps] == [128 * s for s in range(1, 13)]  # 4 blocks x 32 tokens a step
    assert all({"loss", "lm", "kd", "lr", "grad_norm", "tokens_per_s"} <= set(r) for r in steps)
    lrs = [r["lr"] for r in steps]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.003) and lrs[:peak + 1] == sorted(lrs[:peak + 1])  # warm-up to train.lr
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True) and lrs[-1] < 0.003  # then the cosine decay
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 4, 8, 12]
    for name in ("model/config.json", "model/modeling_evoprune.py", "model/evoprune_spec.json", "report.md",
                 "loss.png", "metrics.json", "config.yaml"):
        assert (straight_run / name).exists(), name
    summary = json.loads((straight_run / "metrics.json").read_text())
    assert summary["steps"] == 12 and summary["final_eval_ppl"] == pytest.approx(rows[-1]["eval_ppl"])
    assert "final_eval_ppl" in (straight_run / "report.md").read_text()
    stages = {s["stage"]: s for s in summary["memory"]["stages"]}
    assert list(stages) == ["load model", "evaluation", "training", "export"]
    assert stages["training"]["peak_anon_bytes"] > 0 and "## Memory" in (straight_run / "report.md").read_text()
    before = load_file(str(recovery_inputs / "pruned" / "model.safetensors"))
    after = weights(straight_run)
    assert sorted(before) == sorted(after) and all(before[k].shape == after[k].shape for k in before)
    assert not torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])
    # the exported model is the trained one: its held-out loss is the one measured in memory after the last step
    cfg = config(recovery_inputs)
    exported = load_model(str(straight_run / "model"))
    eval_blocks = data_blocks(cfg, exported.tokenizer, "eval", cfg.data.eval_blocks)
    assert mean_nll(exported.model, eval_blocks, 4) == pytest.approx(rows[-1]["eval_loss"], rel=1e-6)


def test_training_lowers_the_held_out_loss_of_learnable_text(recovery_inputs, tmp_path):
    words = CORPUS_WORDS[:8]  # each document cycles through 8 words: the next word is always predictable
    text = "\n\n".join(" ".join(words[(i + j) % 8] for j in range(40 + i)) for i in range(300))
    (tmp_path / "cycle.txt").write_text(text)
    out = recover(config(recovery_inputs, f"data.source={tmp_path / 'cycle.txt'}"), tmp_path / "run", progress=False)
    evals = [r["eval_loss"] for r in records(out) if "eval_loss" in r]
    assert len(evals) == 4 and all(a > b for a, b in zip(evals, evals[1:]))
    assert evals[-1] < 0.85 * evals[0]


def test_two_processes_give_the_loss_curve_of_one(recovery_inputs, straight_run, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "evoprune.cli", *train_args(recovery_inputs, out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = records(straight_run), records(out)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for key in ("loss", "eval_loss"):
        a = [r[key] for r in one if key in r]
        assert a == pytest.approx([r[key] for r in two if key in r], rel=1e-4)
    ddp = json.loads((out / "metrics.json").read_text())
    single = json.loads((straight_run / "metrics.json").read_text())
    assert ddp["processes"] == 2
    for key in ("start_unseen_ppl_mean", "final_unseen_ppl_mean", "final_heldback_ppl"):  # the main process measures
        assert ddp[key] == pytest.approx(single[key], rel=1e-4), key
    wa, wb = weights(straight_run), weights(out)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_cached_teacher_reaches_the_online_weights(recovery_inputs, straight_run, tmp_path):
    out = tmp_path / "cached"
    assert main(train_args(recovery_inputs, out, "train.teacher_source=cached")) == 0
    assert_same_losses(records(out), records(straight_run), rel=1e-5)  # the tiny vocabulary is cached whole
    wa, wb = weights(straight_run), weights(out)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["teacher"] == "cached full" and "teacher read from" in (out / "report.md").read_text()


def test_killed_run_resumes_at_its_step_and_reaches_the_same_weights(recovery_inputs, straight_run, tmp_path):
    out = tmp_path / "killed"
    recover(config(recovery_inputs), out, progress=False, stop_after_steps=6)
    assert not (out / "model").exists()
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"] == "step-0000004"
    assert max(r["step"] for r in records(out)) == 6  # steps 5-6 are redone after the resume
    recover(config(recovery_inputs), out, progress=False)
    assert [r["step"] for r in records(out)] == [r["step"] for r in records(straight_run)]
    assert_same_losses(records(out), records(straight_run), rel=1e-6)
    wa, wb = weights(straight_run), weights(out)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)


def test_lora_merges_into_a_plain_checkpoint_of_the_pruned_shape(recovery_inputs, tmp_path):
    out = tmp_path / "lora"
    assert main(train_args(recovery_inputs, out, "--lora", "train.lora_targets=[q_proj,down_proj]",
                           "train.lora_r=4")) == 0
    merged, pruned = weights(out), load_file(str(recovery_inputs / "pruned" / "model.safetensors"))
    assert sorted(merged) == sorted(pruned)  # no lora_A / lora_B / base_layer names left
    assert all(merged[k].shape == pruned[k].shape for k in merged)
    changed = [k for k in merged if not torch.equal(merged[k], pruned[k])]
    assert changed and all(k.endswith(("q_proj.weight", "down_proj.weight")) for k in changed)
    check = ("import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
             "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
             "assert 'evoprune' not in sys.modules\n"
             "print(sum(p.numel() for p in m.parameters()), m(torch.tensor([[3, 4, 5]])).logits.shape[-1])\n")
    done = subprocess.run([sys.executable, "-c", check, str(out / "model")], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    n_params, vocab = map(int, done.stdout.split())
    assert n_params == sum(t.numel() for t in pruned.values()) and vocab == 82


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_teacher_with_another_vocabulary_is_refused(recovery_inputs, tmp_path, capsys):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(vocab_size=90, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=16)).save_pretrained(other)
    AutoTokenizer.from_pretrained(recovery_inputs / "dense").save_pretrained(other)
    args = train_args(recovery_inputs, tmp_path / "out")
    args[args.index("--teacher") + 1] = str(other)
    capsys.readouterr()  # save_pretrained's progress bar is not the command's output
    assert main(args) == 2
    assert "vocabulary" in _error(capsys)


def test_teacher_with_another_tokenizer_is_refused(recovery_inputs, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(recovery_inputs / "dense", other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["w0"], vocab["w1"] = vocab["w1"], vocab["w0"]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    args = train_args(recovery_inputs, tmp_path / "out")
    args[args.index("--teacher") + 1] = str(other)
    assert main(args) == 2
    assert "different tokenizers" in _error(capsys)


def test_budget_below_one_step_is_refused(recovery_inputs, tmp_path, capsys):
    assert main(train_args(recovery_inputs, tmp_path / "out", "--tokens", "100")) == 2
    assert "smaller than one optimizer step" in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_missing_lora_target_is_refused(recovery_inputs, tmp_path, capsys):
    assert main(train_args(recovery_inputs, tmp_path / "out", "--lora", "train.lora_targets=[q_proj,c_attn]")) == 2
    assert "c_attn" in _error(capsys)


def test_resume_from_another_runs_checkpoint_is_refused(recovery_inputs, straight_run, tmp_path, capsys):
    checkpoint = straight_run / "checkpoints" / "step-0000012"
    assert checkpoint.is_dir()
    assert main(train_args(recovery_inputs, tmp_path / "out", "train.lr=0.001", "--resume-from",
                           str(checkpoint))) == 2
    assert "belongs to another run" in _error(capsys) and not (tmp_path / "out").exists()


def test_cached_teacher_with_hidden_state_loss_is_refused(recovery_inputs, tmp_path, capsys):
    assert main(train_args(recovery_inputs, tmp_path / "out", "train.teacher_source=cached",
                           "train.hidden_weight=0.5")) == 2
    assert "teacher_source=online" in _error(capsys)


def test_fsdp_on_cpu_is_explained(recovery_inputs, tmp_path, capsys):
    assert main(train_args(recovery_inputs, tmp_path / "out", "train.distributed=fsdp")) == 2
    assert "fsdp needs GPUs" in _error(capsys)
