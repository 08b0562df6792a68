"""The nemotron-nas search space: level ladders, the NAS space, settings keys and the `--space` flag."""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest

from evoprune.darwinlm import pipeline as darwin
from evoprune.arch.shape import LayerShape, ModelShape
from evoprune.cli import _overrides, main, parse_args
from evoprune.config import ConfigError, RunConfig, load_config
from evoprune.errors import UserError
from evoprune.whittle.arguments import check_arguments
from evoprune.whittle.run_settings import run_settings
from evoprune.whittle.space import SearchSpace
from evoprune.obs.database import DatabaseSettings, database_stamp, stamped_settings
from evoprune.obs.levels import attention_ladder, mlp_ladder
from evoprune.arch import nemotron_format as fmt
from evoprune_tests import CASES_BY_ID

SMOL_LAYER = LayerShape(9, 3, 1536)  # SmolLM2-135M: 9 query heads over 3 KV groups, 1536 = 6 x 256 neurons
SMOL = ModelShape(family="llama", vocab_size=49152, hidden_size=576, head_dim=64, layers=(SMOL_LAYER,) * 30,
                  tied_embeddings=True)


def test_smollm2_levels_are_whole_attention_and_mlp_widths_at_multiples_of_256():
    assert attention_ladder(SMOL, SMOL_LAYER, 11, space="nemotron-nas") == \
        [[], [attention_ladder(SMOL, SMOL_LAYER, 11)[-1][0]]]
    assert mlp_ladder(SMOL_LAYER, 11, space="nemotron-nas") == [0, 256, 512, 768, 1024, 1280, 1536]
    settings = DatabaseSettings(space="nemotron-nas")
    table = darwin.planned_cost_table(SMOL, settings, "params")
    assert all(len(levels) == 2 for levels in table.costs["attention"])
    assert all(len(levels) == 7 for levels in table.costs["mlp"])


def test_mlp_levels_never_exceed_the_dense_width():
    assert mlp_ladder(LayerShape(4, 2, 1000), 11, space="nemotron-nas") == [0, 256, 512, 768, 1000]
    assert mlp_ladder(LayerShape(4, 2, 37), 11, space="nemotron-nas") == [0, 37]  # narrower than 256: all or none
    assert mlp_ladder(SMOL_LAYER, 11, multiple=512, space="nemotron-nas") == [0, 512, 1024, 1536]


def test_the_default_space_keeps_old_databases_and_runs_valid():
    default = asdict(DatabaseSettings())
    assert "space" not in stamped_settings(default)
    nemotron = asdict(DatabaseSettings(space="nemotron-nas"))
    assert stamped_settings(nemotron)["space"] == "nemotron-nas"
    assert database_stamp("f", "c", DatabaseSettings()) != \
        database_stamp("f", "c", DatabaseSettings(space="nemotron-nas"))
    old = {k: v for k, v in default.items() if k != "space"}  # an index written before the field existed
    assert database_stamp("f", "c", DatabaseSettings(**old)) == database_stamp("f", "c", DatabaseSettings())
    assert "space" not in darwin.search_config(RunConfig())["search"]
    cfg = load_config(None, ["search.space=nemotron-nas"])
    assert darwin.search_config(cfg)["search"]["space"] == "nemotron-nas"
    assert darwin.database_settings(cfg).space == "nemotron-nas"


def test_unknown_spaces_are_refused():
    with pytest.raises(ConfigError, match="search.space"):
        load_config(None, ["search.space=tensorrt"])
    with pytest.raises(UserError, match="search space"):
        DatabaseSettings(space="tensorrt").check()


def test_nas_space_fixes_hidden_size_and_heads_and_steps_mlp_widths_by_256():
    space = SearchSpace(SMOL, tuple(range(30)), space="nemotron-nas")
    dims = space.dimensions()
    assert dims["hidden"] == [576] and dims["kv_groups"] == [3] and dims["heads_per_group"] == [3]
    assert dims["mlp"] == [256, 512, 768, 1024, 1280, 1536]
    rng = random.Random(0)
    for per_layer in (False, True):
        space = SearchSpace(SMOL, tuple(range(30)), per_layer=per_layer, space="nemotron-nas")
        for _ in range(20):
            spec = space.to_spec(space.sample(rng))
            assert spec.hidden is None
            assert all(len(ls.heads) in (0, 9) and len(ls.neurons) % 256 == 0 for ls in spec.layers)
    with pytest.raises(UserError, match="search space"):
        SearchSpace(SMOL, tuple(range(30)), space="tensorrt")


def test_nas_run_settings_name_the_space_only_when_it_is_not_the_default():
    assert "space" not in run_settings(RunConfig(), check_arguments(RunConfig()))["prune"]
    cfg = load_config(None, ["search.space=nemotron-nas"])
    assert run_settings(cfg, check_arguments(cfg))["prune"]["space"] == "nemotron-nas"


@pytest.mark.parametrize("command", ["darwin", "database", "search", "nas"])
def test_the_space_flag_sets_search_space(command, tmp_path):
    args = parse_args([command, "--out", str(tmp_path / "o"), "--space", "nemotron-nas"])
    assert _overrides(args)["search.space"] == "nemotron-nas"


def test_a_bad_space_flag_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["darwin", "--out", str(tmp_path / "o"), "--space", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--space" in err


def test_models_the_format_cannot_hold_are_refused_before_a_search():
    fmt.check_space_fits("nemotron-nas", CASES_BY_ID["llama-gqa"].config())
    fmt.check_space_fits("full", CASES_BY_ID["qwen3-gqa"].config())
    with pytest.raises(UserError, match="q/k norms"):
        fmt.check_space_fits("nemotron-nas", CASES_BY_ID["qwen3-gqa"].config())
    with pytest.raises(UserError, match="sliding window"):
        fmt.check_space_fits("nemotron-nas", CASES_BY_ID["mistral-gqa-sw4"].config())


@pytest.mark.parametrize("width", [1, 37, 255, 256, 257, 1000, 1536, 8192, 14336, 28672])
@pytest.mark.parametrize("hidden", [32, 576, 2048, 4096, 8192])
def test_ffn_mult_decodes_to_the_padded_width(width, hidden):
    mult = fmt.ffn_mult(width, hidden)
    assert round(mult, 6) == mult
    assert fmt.intermediate_size(mult, hidden) == fmt.padded_width(width) >= width
