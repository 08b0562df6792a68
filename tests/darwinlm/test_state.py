"""Search state: atomic, resumable, and refusing a changed configuration or a corrupt file."""

from __future__ import annotations

import random

import pytest

from evoprune.errors import UserError
from evoprune.levels.genotype import Genotype
from evoprune.darwinlm.state import SearchState
from evoprune.training.rng import rng_state


def test_state_round_trip_restores_rng(tmp_path):
    rng = random.Random(7)
    rng.random()
    state = SearchState({"a": 1}, 3, Genotype((1,), (2,)), rng_state(rng), 10, 1.5, [{"generation": 3}])
    state.save(tmp_path / "state.json")
    loaded = SearchState.load(tmp_path / "state.json", {"a": 1})
    assert loaded.parent == state.parent and loaded.generation == 3
    assert loaded.restore_rng().random() == rng.random()


def test_changed_config_is_refused_naming_keys(tmp_path):
    SearchState({"a": 1, "b": 2}, 1, Genotype((1,), (1,)), rng_state(random.Random(0))).save(tmp_path / "state.json")
    with pytest.raises(UserError, match=r"other settings \(b: 2 -> 3, c: \(unset\) -> 0\)"):
        SearchState.load(tmp_path / "state.json", {"a": 1, "b": 3, "c": 0})


@pytest.mark.parametrize("content", [b'{"format": "evoprune.search_state/1", "generation": ', b'{"format": "other"}',
                                     b'\xff\xfe{"format"', b""])
def test_corrupt_state_is_one_line_naming_the_file_and_force(tmp_path, content):
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(UserError, match="corrupt.*delete it") as caught:
        SearchState.load(tmp_path / "state.json", {})
    message = str(caught.value)
    assert str(tmp_path / "state.json") in message and "--force" in message and "\n" not in message


def test_a_config_with_tuples_resumes_as_saved(tmp_path):
    config = {"stages": [(0, 64, 2), (32, 128, 1)], "settings": {"mutation_scales": (1, 2)}}
    SearchState(config, 1, Genotype((1,), (1,)), rng_state(random.Random(0))).save(tmp_path / "state.json")
    assert SearchState.load(tmp_path / "state.json", config).generation == 1
    with pytest.raises(UserError, match=r"other settings \(stages: "):
        SearchState.load(tmp_path / "state.json", {**config, "stages": [(0, 64, 2)]})
