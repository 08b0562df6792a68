"""SubnetSpec: JSON round trip and validation errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evoprune_tests import random_spec
from evoprune.arch.shape import LayerShape, ModelShape
from evoprune.arch.spec import SPEC_FORMAT, LayerSpec, SubnetSpec
from evoprune.errors import UserError

GQA = ModelShape(family="llama", vocab_size=99, hidden_size=32, head_dim=8,
                 layers=(LayerShape(4, 2, 37),) * 3, tied_embeddings=False)
MHA = dataclasses.replace(GQA, layers=(LayerShape(4, 4, 37),) * 3, qkv_bias=True)


def full_layers(shape=GQA):
    return SubnetSpec.full(shape).layers


def spec_with(layer0: LayerSpec, shape=GQA, hidden=None) -> SubnetSpec:
    layers = full_layers(shape)
    layers[0] = layer0
    return SubnetSpec(shape, layers, hidden)


def assert_invalid(spec: SubnetSpec, *fragments: str, against=None):
    with pytest.raises(UserError) as info:
        spec.validate(against)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# ---- round trip ------------------------------------------------------------------------------

def test_json_round_trip_in_memory_and_file(tmp_path):
    spec = random_spec(GQA, random.Random(5), keep_hidden=False)
    spec.meta = {"method": "test", "target": 0.5}
    d = spec.to_dict()
    assert d["format"] == SPEC_FORMAT
    again = SubnetSpec.from_dict(json.loads(json.dumps(d)))
    assert again == spec
    assert again.source == GQA
    path = tmp_path / "spec.json"
    spec.save(path)
    loaded = SubnetSpec.load(path)
    assert loaded == spec
    assert loaded.to_dict() == d
    assert json.loads(path.read_text())["summary"]["params"] == spec.num_params()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_full_spec_round_trip_and_identity(tmp_path):
    spec = SubnetSpec.full(MHA, method="none")
    spec.save(tmp_path / "s.json")
    loaded = SubnetSpec.load(tmp_path / "s.json")
    assert loaded == spec and loaded.is_identity() and loaded.is_uniform()
    assert loaded.meta == {"method": "none"}


def test_from_groups():
    layer = LayerShape(8, 2, 10)  # 4 query heads per KV group
    ls = LayerSpec.from_groups(layer, [1], [0, 3], [4, 2])
    assert ls == LayerSpec([4, 7], [1], [2, 4])
    assert LayerSpec.from_groups(layer, [0, 1]) == LayerSpec.full(layer)
    assert LayerSpec.from_groups(layer, [0], [], []).is_dropped
    assert LayerSpec.from_groups(layer, [], [0]).kv_heads == []


def test_uniform_vs_heterogeneous():
    assert SubnetSpec.full(GQA).is_uniform()
    same = [LayerSpec.from_groups(GQA.layers[0], [1], [0], list(range(20)))] * 3
    assert SubnetSpec(GQA, copy.deepcopy(same)).is_uniform()
    # uniform with one layer dropped entirely is still an ordinary (shallower) model
    dropped = copy.deepcopy(same)
    dropped[1] = LayerSpec([], [], [])
    assert SubnetSpec(GQA, dropped).is_uniform()
    # different neuron counts, or a layer without its MLP / attention, is heterogeneous
    hetero = copy.deepcopy(same)
    hetero[2] = LayerSpec.from_groups(GQA.layers[0], [1], [0], list(range(19)))
    assert not SubnetSpec(GQA, hetero).is_uniform()
    no_mlp = copy.deepcopy(same)
    no_mlp[0] = LayerSpec(no_mlp[0].heads, no_mlp[0].kv_heads, [])
    assert not SubnetSpec(GQA, no_mlp).is_uniform()
    no_attn = copy.deepcopy(same)
    no_attn[0] = LayerSpec([], [], no_attn[0].neurons)
    assert not SubnetSpec(GQA, no_attn).is_uniform()


# ---- validation errors -------------------------------------------------------------------------

@pytest.mark.parametrize("layer0, fragments", [
    (LayerSpec([0, 1, 2, 3], [0, 1], [0, 37]), ["layer 0", "neurons", "index 37 out of range 0..36"]),
    (LayerSpec([0, 1, 2, 4], [0, 1], [0]), ["layer 0", "heads", "index 4 out of range 0..3"]),
    (LayerSpec([0, 1, 2, 3], [0, 2], [0]), ["kv_heads", "index 2 out of range 0..1"]),
    (LayerSpec([0, 1, 2, 3], [0, 1], [-1, 3]), ["neurons", "index -1 out of range"]),
    (LayerSpec([0, 1, 2, 3], [0, 1], [3, 3, 5]), ["neurons", "duplicate index 3"]),
    (LayerSpec([0, 1, 1, 3], [0, 1], [0]), ["heads", "duplicate index 1"]),
    (LayerSpec([0, 1, 2, 3], [1, 0], [0]), ["kv_heads", "indices must be sorted"]),
    (LayerSpec([0, 1, 2, 3], [0, 1], [5, 2]), ["neurons", "indices must be sorted"]),
    (LayerSpec([0, 1, 2, 3], [0, 1], [1.5]), ["neurons", "integers"]),
    (LayerSpec([0, 1, 2], [0, 1], [0]), ["per KV group are [2, 1]", "same number"]),  # uneven
    (LayerSpec([0, 1], [0, 1], [0]), ["per KV group are [2, 0]"]),  # kept group without heads
    (LayerSpec([0, 2], [0], [0]), ["query head 2", "KV group 1", "not kept"]),
    (LayerSpec([0, 1], [], [0]), ["both empty", "both non-empty"]),  # heads without KV groups
    (LayerSpec([], [0], [0]), ["both empty", "both non-empty"]),  # KV groups without heads
])
def test_layer_problems(layer0, fragments):
    msg = assert_invalid(spec_with(layer0), *fragments)
    assert msg.startswith("invalid SubnetSpec")


def test_hidden_problems():
    assert_invalid(spec_with(LayerSpec.full(GQA.layers[0]), hidden=[0, 32]), "hidden channels", "index 32")
    assert_invalid(spec_with(LayerSpec.full(GQA.layers[0]), hidden=[]), "hidden channels: none kept")
    assert_invalid(spec_with(LayerSpec.full(GQA.layers[0]), hidden=[3, 1]), "hidden channels", "sorted")


def test_wrong_number_of_layers():
    spec = SubnetSpec(GQA, full_layers()[:2])
    assert_invalid(spec, "spec has 2 layers, model has 3")
    spec = SubnetSpec(GQA, full_layers() + [LayerSpec.full(GQA.layers[0])])
    assert_invalid(spec, "spec has 4 layers, model has 3")


def test_no_layer_kept():
    assert_invalid(SubnetSpec(GQA, [LayerSpec([], [], [])] * 3), "every layer is removed")


def test_many_problems_are_summarised():
    layers = [LayerSpec([0, 9], [0], [99, 98]) for _ in range(3)]
    assert_invalid(SubnetSpec(GQA, layers, hidden=[40]), "layer 0", "layer 1", "(and 5 more)")


def test_spec_for_a_different_model():
    spec = SubnetSpec.full(GQA)
    spec.validate(against=GQA)  # same model: fine
    for other in (MHA, dataclasses.replace(GQA, hidden_size=64), dataclasses.replace(GQA, family="qwen2"),
                  dataclasses.replace(GQA, layers=GQA.layers[:2]), dataclasses.replace(GQA, tied_embeddings=True)):
        msg = assert_invalid(spec, "different model", against=other)
        assert other.describe() in msg or "this model is" in msg


def test_extra_does_not_affect_model_identity():
    other = dataclasses.replace(GQA, extra={"note": "x"})
    SubnetSpec.full(GQA).validate(against=other)


# ---- files -------------------------------------------------------------------------------------

def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        SubnetSpec.load(tmp_path / "nope.json")


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"])
def test_load_malformed_json(tmp_path, text):
    path = tmp_path / "spec.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as info:
        SubnetSpec.load(path)
    assert "not valid JSON" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(format="evoprune.subnet_spec/999"),
    lambda d: d.pop("format"),
    lambda d: d.update(format=None),
])
def test_wrong_format_tag(tmp_path, mutate):
    d = SubnetSpec.full(GQA).to_dict()
    mutate(d)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="not a SubnetSpec.*format"):
        SubnetSpec.load(path)


def test_not_an_object(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(UserError, match="not a SubnetSpec"):
        SubnetSpec.load(path)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("layers"),
    lambda d: d.pop("source"),
    lambda d: d["layers"][0].pop("neurons"),
    lambda d: d["source"].pop("vocab_size"),
    lambda d: d["source"].update(unknown_field=1),
    lambda d: d.update(layers=5),
])
def test_malformed_structure(tmp_path, mutate):
    d = SubnetSpec.full(GQA).to_dict()
    mutate(d)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="malformed SubnetSpec"):
        SubnetSpec.load(path)


def test_loading_validates(tmp_path):
    d = SubnetSpec.full(GQA).to_dict()
    d["layers"][1]["neurons"] = [5, 5]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="layer 1: neurons: duplicate index 5"):
        SubnetSpec.load(path)


# ---- property test -----------------------------------------------------------------------------

shapes = st.builds(
    lambda n_layers, groups, rep, mlp, d, hd, tied, qkv, qk_norm: ModelShape(
        family="llama", vocab_size=50, hidden_size=d, head_dim=hd, layers=(LayerShape(groups * rep, groups, mlp),)
        * n_layers, tied_embeddings=tied, qkv_bias=qkv, qk_norm=qk_norm),
    st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 40), st.integers(1, 48),
    st.integers(1, 16), st.booleans(), st.booleans(), st.booleans(),
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_random_valid_specs_round_trip_and_validate(shape, seed):
    spec = random_spec(shape, random.Random(seed))
    spec.validate(against=shape)
    again = SubnetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.num_params() == spec.num_params()
    assert 0.0 <= spec.block_sparsity() < 1.0
    assert again.result_shape().num_layers == len(spec.kept_layers()) >= 1
