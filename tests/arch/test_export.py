"""Export to a HF folder, load it back (stock transformers in a fresh process, and evoprune's loader)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, PreTrainedTokenizerFast

from evoprune_tests import CASES_BY_ID, random_spec
from evoprune.arch.adapter import adapter_for
from evoprune.arch.export import export_checkpoint
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.errors import UserError

ATOL = 1e-5
IDS = torch.tensor([[5, 17, 42, 8, 91, 23, 3, 66, 12, 7], [9, 9, 30, 61, 4, 98, 15, 27, 50, 11]])


@pytest.fixture
def models_module(monkeypatch):
    """evoprune.models, with a stand-in for evoprune.assets while that module is not written yet.

    Only `resolve_model_path` imports it, and these tests pass folders, never the embedded name.
    """
    try:
        import evoprune.assets  # noqa: F401
    except ModuleNotFoundError:
        stub = types.ModuleType("evoprune.assets")
        stub.EMBEDDED_MODEL = "smollm2-135m"

        def embedded_model_dir():
            raise AssertionError("tests must not use the embedded model")

        stub.embedded_model_dir = embedded_model_dir
        monkeypatch.setitem(sys.modules, "evoprune.assets", stub)
    import evoprune.models

    return evoprune.models


def word_tokenizer():
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 99)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<pad>")


def hetero_spec(shape, seed):
    """Heterogeneous: layer 0 without attention, layer 2 without MLP, random units elsewhere."""
    spec = random_spec(shape, random.Random(seed), keep_hidden=True, p_no_attention=0, p_no_mlp=0)
    spec.layers[0] = LayerSpec([], [], spec.layers[0].neurons)
    spec.layers[2] = LayerSpec(spec.layers[2].heads, spec.layers[2].kv_heads, [])
    return spec.validate()


@torch.no_grad()
def logits(model):
    return model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three exports (two heterogeneous, one uniform) with their in-memory logits."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, case_id in (("hetero_llama", "llama-mha-bias-tied"), ("hetero_mistral", "mistral-gqa-sw4"),
                          ("uniform_qwen3", "qwen3-mha-tied")):
        dense = CASES_BY_ID[case_id].build()
        adapter = adapter_for(dense.config)
        shape = adapter.shape(dense)
        if name.startswith("uniform"):
            layers = [LayerSpec.from_groups(layer, [0, 2], None, list(range(0, 37, 2))) for layer in shape.layers]
            spec = SubnetSpec(shape, layers, meta={"method": "test"}).validate()
            assert spec.is_uniform()
        else:
            spec = hetero_spec(shape, seed=len(out))
            assert not spec.is_uniform()
        sliced = adapter.slice(dense, spec)
        folder = export_checkpoint(sliced, root / name, tokenizer=word_tokenizer() if name == "hetero_llama" else None,
                                   spec=spec)
        out[name] = dict(folder=folder, spec=spec, logits=logits(sliced), model=sliced)
    torch.save(IDS, root / "ids.pt")
    return out


LOADER = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoEvoprune(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "evoprune" or name.startswith("evoprune."):
                raise ImportError("exported checkpoints must not import evoprune: " + name)

    sys.meta_path.insert(0, NoEvoprune())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    jobs = json.loads(sys.argv[1])
    ids = torch.load(sys.argv[2])
    for job in jobs:
        model = AutoModelForCausalLM.from_pretrained(job["folder"], trust_remote_code=job["trust"]).eval()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.save(out, job["out"])
        print(json.dumps({"folder": job["folder"], "cls": type(model).__name__, "module": type(model).__module__}))
    assert "evoprune" not in sys.modules and not any(m.startswith("evoprune.") for m in sys.modules)
""")


@pytest.fixture(scope="module")
def loaded_elsewhere(exported, tmp_path_factory):
    """Load every export with stock transformers in one fresh process that cannot import evoprune."""
    work = tmp_path_factory.mktemp("subprocess")
    jobs = [dict(folder=str(e["folder"]), trust=not name.startswith("uniform"), out=str(work / f"{name}.pt"))
            for name, e in exported.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(work / "modules"),
           "PYTHONPATH": ""}
    ids_file = next(iter(exported.values()))["folder"].parent / "ids.pt"
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(jobs), str(ids_file)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    info = {name: line for name, line in zip(exported, lines)}
    return {name: dict(info[name], logits=torch.load(job["out"])) for name, job in zip(exported, jobs)}


# ---- folder contents ---------------------------------------------------------------------------

def test_heterogeneous_export_ships_remote_code(exported):
    for name in ("hetero_llama", "hetero_mistral"):
        folder, spec = exported[name]["folder"], exported[name]["spec"]
        config = json.loads((folder / "config.json").read_text())
        family = spec.source.family
        assert config["model_type"] == f"evoprune_{family}"
        assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_evoprune.")
        assert config["auto_map"]["AutoConfig"].startswith("configuration_evoprune.")
        assert config["layer_num_attention_heads"][0] == 0
        assert config["layer_intermediate_sizes"][2] == 0
        for f in ("modeling_evoprune.py", "configuration_evoprune.py", "model.safetensors"):
            assert (folder / f).is_file(), f
        for f in ("modeling_evoprune.py", "configuration_evoprune.py"):
            assert "evoprune." not in "".join(line for line in (folder / f).read_text().splitlines()
                                              if line.startswith(("import", "from")))
        assert SubnetSpec.load(folder / "evoprune_spec.json") == spec
        assert not list(folder.parent.glob(f".{name}.*"))  # no staging leftovers
    assert (exported["hetero_llama"]["folder"] / "tokenizer.json").is_file()


def test_uniform_export_is_a_plain_checkpoint(exported):
    folder = exported["uniform_qwen3"]["folder"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert "auto_map" not in config
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert not list(folder.glob("*.py"))
    assert config["num_key_value_heads"] == 2 and config["intermediate_size"] == 19


# ---- loading in a process without evoprune -----------------------------------------------------

def test_stock_transformers_reproduces_logits(exported, loaded_elsewhere):
    for name, e in exported.items():
        got = loaded_elsewhere[name]
        torch.testing.assert_close(got["logits"], e["logits"], atol=ATOL, rtol=0, msg=lambda m: f"{name}: {m}")
    assert loaded_elsewhere["uniform_qwen3"]["cls"] == "Qwen3ForCausalLM"
    assert loaded_elsewhere["uniform_qwen3"]["module"].startswith("transformers.models.")
    for name in ("hetero_llama", "hetero_mistral"):
        family = exported[name]["spec"].source.family
        assert loaded_elsewhere[name]["cls"] == f"Evoprune{family.capitalize()}ForCausalLM"
        assert loaded_elsewhere[name]["module"].startswith("transformers_modules")


# ---- loading with evoprune (no remote code) ----------------------------------------------------

def test_load_model_reads_heterogeneous_export_without_remote_code(exported, models_module):
    e = exported["hetero_llama"]
    loaded = models_module.load_model(str(e["folder"]), trust_remote_code=False)
    assert type(loaded.model).__module__.startswith("evoprune.")
    assert type(loaded.model).__name__ == "EvopruneLlamaForCausalLM"
    assert loaded.adapter.shape(loaded.model) == e["spec"].result_shape()
    assert loaded.tokenizer is not None and loaded.tokenizer("w5 w17")["input_ids"] == [5, 17]
    assert loaded.model.get_input_embeddings().weight.data_ptr() == loaded.model.lm_head.weight.data_ptr()  # tied
    torch.testing.assert_close(logits(loaded.model), e["logits"], atol=ATOL, rtol=0)


def test_load_model_reads_uniform_export(exported, models_module):
    e = exported["uniform_qwen3"]
    loaded = models_module.load_model(str(e["folder"]), with_tokenizer=False)
    assert type(loaded.model).__name__ == "Qwen3ForCausalLM"
    torch.testing.assert_close(logits(loaded.model), e["logits"], atol=ATOL, rtol=0)
    assert loaded.model.get_input_embeddings().weight.data_ptr() == loaded.model.lm_head.weight.data_ptr()


# ---- refusing to overwrite ---------------------------------------------------------------------

def test_export_into_non_empty_dir_needs_force(exported, tmp_path):
    model = exported["hetero_mistral"]["model"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists.*--force"):
        export_checkpoint(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    export_checkpoint(model, out, force=True)
    assert not (out / "mine.txt").exists()
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or backup leftovers


def test_failed_export_leaves_existing_folder_alone(exported, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(exported["hetero_mistral"]["model"], out, tokenizer=BrokenTokenizer(), force=True)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the partial folder is gone


def test_export_into_empty_dir_is_fine(exported, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    export_checkpoint(exported["uniform_qwen3"]["model"], out)
    assert (out / "config.json").is_file()


def test_export_onto_a_file_is_refused(exported, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        export_checkpoint(exported["uniform_qwen3"]["model"], target, force=True)
    assert target.read_text() == "x"


# ---- bad model folders -------------------------------------------------------------------------

def test_pickle_only_folder_is_refused_unless_allowed(tmp_path, models_module):
    model = CASES_BY_ID["llama-gqa"].build()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle.*allow-pickle"):
        models_module.check_weight_files(tmp_path, allow_pickle=False)
    with pytest.raises(UserError, match="pickle"):
        models_module.load_model(str(tmp_path), with_tokenizer=False)
    models_module.check_weight_files(tmp_path, allow_pickle=True)  # no error
    loaded = models_module.load_model(str(tmp_path), allow_pickle=True, with_tokenizer=False)
    torch.testing.assert_close(logits(loaded.model), logits(model), atol=ATOL, rtol=0)


def test_folder_without_weights(tmp_path, models_module):
    CASES_BY_ID["llama-gqa"].config().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no weight files"):
        models_module.check_weight_files(tmp_path, allow_pickle=True)


def test_missing_config(tmp_path, models_module):
    with pytest.raises(UserError, match="no config.json"):
        models_module.read_config(tmp_path)
    with pytest.raises(UserError, match="no config.json"):
        models_module.load_model(str(tmp_path), with_tokenizer=False)


@pytest.mark.parametrize("text", ["{\"model_type\": ", "\xff\xfe\x00"])
def test_corrupt_config(tmp_path, models_module, text):
    (tmp_path / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError, match="corrupt config.json"):
        models_module.read_config(tmp_path)


def test_unreadable_config(tmp_path, models_module):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(UserError, match="cannot read config.json"):
        models_module.read_config(tmp_path)


def test_unsupported_architecture(tmp_path, models_module):
    GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=99).save_pretrained(tmp_path)
    with pytest.raises(UserError) as info:
        models_module.read_config(tmp_path)
    msg = str(info.value)
    assert "unsupported architecture 'gpt2'" in msg
    for supported in ("llama", "mistral", "qwen2", "qwen3"):
        assert supported in msg.split("supported:")[1]
    assert "evoprune_" not in msg


def test_foreign_remote_code_needs_trust(tmp_path, models_module):
    config = CASES_BY_ID["llama-gqa"].config().to_dict()
    config.update(model_type="my_llama", auto_map={"AutoConfig": "configuration_my.MyConfig"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="remote code"):
        models_module.read_config(tmp_path)
