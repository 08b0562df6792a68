"""One vocabulary for size and the shared flags: every flag is a config field that a YAML file can set and the flag
overrides; the former spellings still work for one release, each with one note, and give the same config as the new
spelling; saved darwin runs keep resuming. The pipelines are replaced by stand-ins that keep the config they get."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import yaml

import evoprune
from evoprune.arch.params import total_params
from evoprune.arch.target import total_at_sparsity
from evoprune.cli import build_parser, main
from evoprune.config import RunConfig, load_config
from evoprune.darwinlm import pipeline as darwin
from evoprune.models import load_model, source_shape

from evoprune_tests import tiny_gqa_llama


@pytest.fixture
def captured(monkeypatch):
    """The config each pipeline is called with, by command; nothing runs."""
    seen: dict[str, RunConfig] = {}

    def pipeline(name):
        def run(cfg, out, *args, **kwargs):
            seen[name] = cfg
            return Path(out)
        return run

    monkeypatch.setattr("evoprune.whittle.pipeline.run", pipeline("nas"))
    monkeypatch.setattr("evoprune.darwinlm.pipeline.run", pipeline("darwin"))
    monkeypatch.setattr("evoprune.evaluation.run.evaluate",
                        lambda cfg, model, out, **kwargs: seen.__setitem__("eval", cfg) or Path(out))
    return seen


@pytest.fixture
def command(tiny_run_inputs, tmp_path, captured, caplog):
    """command(name, *flags) -> (the config its pipeline got, the warnings logged)."""
    def run(name: str, *flags) -> tuple[RunConfig, list[str]]:
        caplog.clear()
        argv = [name, "--model", str(tiny_run_inputs / "dense"), "--data", str(tiny_run_inputs / "corpus.txt"),
                "--out", str(tmp_path / "out"), "--quiet", *map(str, flags)]
        assert main(argv) == 0, caplog.text
        return captured.pop("eval" if name == "eval" else "nas" if name == "nas" else "darwin"), \
            [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return run


def test_the_current_spellings_give_no_note(command):
    for name in ("nas", "darwin", "eval"):
        assert command(name)[1] == []


@pytest.fixture
def shape(tiny_run_inputs):
    return source_shape(str(tiny_run_inputs / "dense"))


def one_note(notes: list[str], *words: str) -> None:
    """Exactly one warning, and it names `words`."""
    assert len(notes) == 1, notes
    assert all(w in notes[0] for w in words), notes[0]


@pytest.mark.parametrize("former, current, words", [
    (["--params-range", "0.4,0.9"], ["--sparsity-range", "0.117,0.7023"], ["--params-range 0.4,0.9 is now "
                                                                           "--sparsity-range 0.117,0.7023"]),
    (["--params-range", "full"], ["--sparsity-range", "full"], ["--params-range is now --sparsity-range"]),
    (["--params-range", "0,1"], ["--sparsity-range", "full"], ["--params-range 0,1 is now --sparsity-range full"]),
    (["--budget", "7"], ["--trials", "7"], ["nas --budget is now --trials"]),
])
def test_former_nas_flags_note_once_and_give_the_same_config(command, former, current, words):
    old, notes = command("nas", *former)
    one_note(notes, *words, "one release")
    assert old == command("nas", *current)[0]


def test_the_former_pick_is_a_target_in_parameters(command, shape):
    old, notes = command("nas", "--pick", "params<=0.6")
    target = round(0.6 * total_params(shape))
    one_note(notes, f"--pick params<=0.6 is now --target-params {target}", "one release")
    new, _ = command("nas", "--target-params", target, "--pick", "target")
    assert old == new and new.prune.target_params == target and new.prune.sparsity is None


def test_former_darwin_flags_and_fields_note_once_and_give_the_same_config(command, tmp_path):
    for former, current in ((["--engine", "torch"], ["--latency-engine", "transformers"]),
                            (["--engine", "llamacpp"], ["--latency-engine", "llamacpp"])):
        old, notes = command("darwin", "--metric", "latency", *former)
        one_note(notes, "darwin --engine is now --latency-engine", "one release")
        assert old == command("darwin", "--metric", "latency", *current)[0]
    new, _ = command("darwin", "--multiple", "8")
    assert new.prune.multiple == 8 and not hasattr(new.database, "multiple")
    old, notes = command("darwin", "database.multiple=8")
    one_note(notes, "database.multiple is now prune.multiple", "one release")
    assert old == new
    old, notes = command("darwin", "search.latency_engine=torch")
    one_note(notes, "search.latency_engine torch is now called transformers")
    assert old == command("darwin", "search.latency_engine=transformers")[0]
    config = tmp_path / "old.yaml"
    config.write_text("database:\n  multiple: 8\n  num_levels: 5\n")
    old, notes = command("darwin", "--config", config)
    one_note(notes, "database.multiple is now prune.multiple")
    assert old == command("darwin", "prune.multiple=8", "database.num_levels=5")[0]
    assert command("darwin", "--config", config, "--multiple", "16")[0].prune.multiple == 16  # the flag wins


def test_a_config_giving_the_former_and_the_current_field_is_one_line(tiny_run_inputs, tmp_path, capsys):
    config = tmp_path / "both.yaml"
    config.write_text("database:\n  multiple: 8\nprune:\n  multiple: 16\n")
    assert main(["darwin", "--config", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "database.multiple is the former name of prune.multiple; give only" in err


def test_the_python_api_takes_the_former_keywords_too(tiny_run_inputs, tmp_path, captured, caplog, shape):
    dense = str(tiny_run_inputs / "dense")
    evoprune.nas(dense, tmp_path / "a", sparsity_range=(0.117, 0.7023), trials=5, objectives="kl,params")
    new = captured.pop("nas")
    caplog.clear()
    evoprune.nas(dense, tmp_path / "a", params_range=(0.4, 0.9), trials=5, objectives=["kl", "params"])
    assert captured.pop("nas") == new
    one_note([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING], "--params-range")
    evoprune.nas(dense, tmp_path / "a", pick="params<=0.5")
    assert captured["nas"].prune.target_params == round(0.5 * total_params(shape))
    evoprune.darwin(dense, tmp_path / "d", overrides={"database.multiple": 4})
    assert captured["darwin"].prune.multiple == 4


def test_yaml_sets_the_nas_and_eval_fields_and_the_flags_override_them(command, tiny_run_inputs, tmp_path):
    dense = str(tiny_run_inputs / "dense")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "prune": {"sparsity": 0.4, "multiple": 2},
        "nas": {"objectives": ["kl", "params", "flops"], "trials": 7, "sampler": "random", "pick": "knee",
                "supernet_steps": 3, "sparsity_range": [0.2, 0.6], "weights": "importance", "mip_step": 0.1},
        "eval": {"teacher": dense, "tasks": "quick", "limit": 5, "num_fewshot": 1}}))
    cfg, _ = command("nas", "--config", config)
    assert dataclasses.asdict(cfg.nas) == {"objectives": ["kl", "params", "flops"], "trials": 7, "sampler": "random",
                                           "pick": "knee", "supernet_steps": 3, "sparsity_range": [0.2, 0.6],
                                           "weights": "importance", "start": None, "mip_step": 0.1}
    assert (cfg.prune.sparsity, cfg.prune.multiple) == (0.4, 2)
    cfg, _ = command("nas", "--config", config, "--objectives", "kl,params", "--trials", "9", "--sampler", "nsga2",
                     "--pick", "target", "--supernet-steps", "0", "--sparsity-range", "0.3,0.7", "--sparsity", "0.5",
                     "--multiple", "4", "--weights", "database", "--start", "mip")
    assert dataclasses.asdict(cfg.nas) == {"objectives": ["kl", "params"], "trials": 9, "sampler": "nsga2",
                                           "pick": "target", "supernet_steps": 0, "sparsity_range": [0.3, 0.7],
                                           "weights": "database", "start": "mip", "mip_step": 0.1}
    assert (cfg.prune.sparsity, cfg.prune.target_params, cfg.prune.multiple) == (0.5, None, 4)
    assert command("nas", "--config", config, "--target-params", "30000")[0].prune.sparsity is None
    assert command("nas", "--config", config, "--sparsity-range", "full")[0].nas.searched_range() is None

    cfg, _ = command("eval", "--config", config)
    assert (cfg.eval.teacher, cfg.eval.tasks, cfg.eval.limit, cfg.eval.num_fewshot) == (dense, "quick", 5, 1)
    cfg, _ = command("eval", "--config", config, "--tasks", "piqa", "--limit", "3", "--num-fewshot", "0",
                     "--teacher", tiny_run_inputs / "dense")
    assert (cfg.eval.tasks, cfg.eval.limit, cfg.eval.num_fewshot) == ("piqa", 3, 0)


def test_the_eval_keywords_of_the_python_api_are_the_eval_fields(tiny_run_inputs, tmp_path, captured):
    dense = str(tiny_run_inputs / "dense")
    evoprune.evaluate(dense, tmp_path / "e", teacher=dense, tasks="piqa", limit=2, num_fewshot=0)
    ev = captured["eval"].eval
    assert (ev.teacher, ev.tasks, ev.limit, ev.num_fewshot, ev.engine) == (dense, "piqa", 2, 0, "transformers")


@pytest.mark.parametrize("device, ok", [("cpu", True), ("cuda", True), ("cuda:0", True), ("cuda:12", True),
                                        ("mps", True), ("gpu", False), ("cuda:", False), ("cuda:x", False),
                                        ("CPU", False), ("cuda:0 ", False), ("tpu", False)])
def test_every_command_accepts_exactly_the_same_devices(device, ok):
    for cls in (None, "recovery"):
        fields = [f"model.device={device!r}"]
        if cls is None:
            check = lambda: load_config(None, fields)  # noqa: E731
        else:
            from evoprune.recovery import RecoveryRunConfig

            check = lambda: load_config(None, fields, cls=RecoveryRunConfig)  # noqa: E731
        if ok:
            assert check().model.device == device
        else:
            with pytest.raises(evoprune.UserError, match=r"model.device \(--device\) must be cpu, cuda, cuda:N or mps"):
                check()


def test_the_shared_flags_have_one_help_text_everywhere():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices

    def helps(flag: str) -> dict[str, str]:
        return {name: next(a.help for a in p._actions if flag in a.option_strings)
                for name, p in commands.items() if any(flag in a.option_strings for a in p._actions)}

    assert len(set(helps("--device").values())) == 1 and len(helps("--device")) == 8
    assert set(helps("--multiple")) == {"prune", "darwin", "database", "search", "nas"}
    assert len(set(helps("--multiple").values())) == 1
    sparsity = helps("--sparsity")
    assert set(sparsity) == {"prune", "darwin", "database", "search", "nas"}
    assert all(text.startswith(sparsity["prune"]) for text in sparsity.values())  # nas adds what it picks
    engines = helps("--engine")  # eval's engine; darwin's former --engine is hidden
    assert engines["eval"].endswith("(eval.engine)") and engines["darwin"] == "==SUPPRESS=="
    assert "(search.latency_engine)" in helps("--latency-engine")["darwin"]


def test_saved_darwin_runs_keep_their_setting_names():
    """database.multiple and latency_engine torch are saved as before, so the runs saved before resume."""
    default = darwin.search_config(RunConfig())
    assert default["database"]["multiple"] == 1 and "latency_engine" not in default["search"]
    assert darwin.search_config(load_config(None, ["search.latency_engine=torch"])) == default
    saved = darwin.search_config(load_config(None, ["prune.multiple=8"]))
    assert saved["database"]["multiple"] == 8 and "prune" not in saved
    assert saved == darwin.search_config(load_config(None, ["database.multiple=8"]))
    assert darwin.database_settings(load_config(None, ["prune.multiple=8"])).multiple == 8
    llamacpp = darwin.search_config(load_config(None, ["search.latency_engine=llamacpp"]))
    assert llamacpp["search"]["latency_engine"] == "llamacpp"


def test_a_darwin_run_saved_before_resumes(tiny_run_inputs, tmp_path):
    """The saved settings of a run started before the renames (default engine left out, database.multiple) still match."""
    cfg = load_config(None, [f"model.source={tiny_run_inputs / 'dense'}", "prune.multiple=8"])
    before = json.loads(json.dumps(darwin.search_config(cfg)))  # as darwin_run.json holds it
    before["database"]["multiple"] = 8
    assert "latency_engine" not in before["search"]
    from evoprune.rundir import changed_keys

    for fields in (["prune.multiple=8"], ["database.multiple=8", "search.latency_engine=torch"]):
        cfg = load_config(None, [f"model.source={tiny_run_inputs / 'dense'}", *fields])
        assert changed_keys(before, darwin.search_config(cfg)) == []


@pytest.mark.parametrize("tied", [False, True])
def test_the_shape_read_from_config_is_the_loaded_models(tmp_path, tied):
    tiny_gqa_llama(tie_word_embeddings=tied).save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), with_tokenizer=False)
    shape = source_shape(str(tmp_path / "m"))
    assert shape == loaded.adapter.shape(loaded.model) and shape.tied_embeddings == tied
    assert total_at_sparsity(shape, 0.0) == sum(p.numel() for p in loaded.model.parameters())
