"""Export of pruned Phi-3 and OLMo-2 models, loaded back by stock transformers in a process that never imported
evoprune (heterogeneous: through the shipped modeling files; uniform: the stock class) and by evoprune's loader."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from evoprune_tests import CASES_BY_ID
from evoprune.arch.adapter import adapter_for
from evoprune.arch.export import export_checkpoint
from evoprune.arch.streamed_export import export_sliced
from evoprune.arch.spec import LayerSpec, SubnetSpec

from .test_export import ATOL, IDS, LOADER, hetero_spec, logits, models_module  # noqa: F401  (a fixture)

EXPORTS = {  # name: (tiny case, uniform?)
    "hetero_phi3": ("phi3-gqa-partial-longrope", False),
    "uniform_phi3": ("phi3-gqa", True),
    "hetero_olmo2": ("olmo2-mha-bias-tied", False),
    "uniform_olmo2": ("olmo2-gqa", True),
}
STOCK = {"phi3": "Phi3ForCausalLM", "olmo2": "Olmo2ForCausalLM"}


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, (case_id, uniform) in EXPORTS.items():
        dense = CASES_BY_ID[case_id].build()
        adapter = adapter_for(dense.config)
        shape = adapter.shape(dense)
        if uniform:
            spec = SubnetSpec(shape, [LayerSpec.from_groups(s, [1], None, list(range(0, 37, 2))) for s in shape.layers])
        else:
            spec = hetero_spec(shape, seed=len(out))
        assert spec.validate().is_uniform() == uniform
        sliced = adapter.slice(dense, spec)
        folder = export_checkpoint(sliced, root / name, spec=spec)
        out[name] = dict(folder=folder, spec=spec, logits=logits(sliced), params=numel(sliced))
    torch.save(IDS, root / "ids.pt")
    return out


@pytest.fixture(scope="module")
def loaded_elsewhere(exported, tmp_path_factory):
    work = tmp_path_factory.mktemp("subprocess")
    jobs = [dict(folder=str(e["folder"]), trust=not name.startswith("uniform"), out=str(work / f"{name}.pt"))
            for name, e in exported.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(work / "modules"),
           "PYTHONPATH": ""}
    ids_file = next(iter(exported.values()))["folder"].parent / "ids.pt"
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(jobs), str(ids_file)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {name: dict(line, logits=torch.load(job["out"])) for name, line, job in zip(exported, lines, jobs)}


def test_heterogeneous_exports_ship_their_modeling_files(exported):
    for name in ("hetero_phi3", "hetero_olmo2"):
        folder, family = exported[name]["folder"], exported[name]["spec"].source.family
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == f"evoprune_{family}"
        lm_class = f"Evoprune{family.capitalize()}ForCausalLM"
        assert config["auto_map"]["AutoModelForCausalLM"] == f"modeling_evoprune_{family}.{lm_class}"
        assert config["auto_map"]["AutoConfig"].startswith(f"configuration_evoprune_{family}.")
        assert config["layer_num_attention_heads"][0] == 0 and config["layer_intermediate_sizes"][2] == 0
        for f in (f"modeling_evoprune_{family}.py", f"configuration_evoprune_{family}.py", "modeling_evoprune.py",
                  "configuration_evoprune.py"):
            assert not re.search(r"^\s*(from|import)\s+evoprune\b", (folder / f).read_text(), re.M), f
    longrope = json.loads((exported["hetero_phi3"]["folder"] / "config.json").read_text())["rope_parameters"]
    assert longrope == CASES_BY_ID["phi3-gqa-partial-longrope"].config().rope_parameters


def test_uniform_exports_are_plain_checkpoints(exported):
    for name in ("uniform_phi3", "uniform_olmo2"):
        folder = exported[name]["folder"]
        config = json.loads((folder / "config.json").read_text())
        assert "auto_map" not in config and not list(folder.glob("*.py"))
        assert config["architectures"] == [STOCK[exported[name]["spec"].source.family]]


def test_stock_transformers_reproduces_logits(exported, loaded_elsewhere):
    for name, e in exported.items():
        got = loaded_elsewhere[name]
        torch.testing.assert_close(got["logits"], e["logits"], atol=ATOL, rtol=0, msg=lambda m: f"{name}: {m}")
        family = e["spec"].source.family
        if name.startswith("uniform"):
            assert got["cls"] == STOCK[family] and got["module"].startswith("transformers.models.")
        else:
            assert got["cls"] == f"Evoprune{family.capitalize()}ForCausalLM"
            assert got["module"].startswith("transformers_modules")


def test_load_model_reads_exports_without_remote_code(exported, models_module):
    for name, e in exported.items():
        loaded = models_module.load_model(str(e["folder"]), trust_remote_code=False, with_tokenizer=False)
        assert type(loaded.model).__module__.startswith("evoprune." if name.startswith("hetero") else "transformers.")
        assert loaded.adapter.shape(loaded.model) == e["spec"].result_shape()
        assert numel(loaded.model) == e["params"] == e["spec"].num_params()
        torch.testing.assert_close(logits(loaded.model), e["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case_id", ["phi3-gqa-partial-longrope", "olmo2-mha-bias-tied"])
def test_streamed_export_equals_the_sliced_model(case_id, tmp_path, models_module):
    dense = CASES_BY_ID[case_id].build()
    adapter = adapter_for(dense.config)
    spec = hetero_spec(adapter.shape(dense), seed=3)
    folder = export_sliced(dense, adapter, spec, {}, tmp_path / "streamed", max_shard_bytes=20_000)
    assert len(list(folder.glob("*.safetensors"))) > 1
    loaded = models_module.load_model(str(folder), with_tokenizer=False)
    torch.testing.assert_close(logits(loaded.model), logits(adapter.slice(dense, spec)), atol=ATOL, rtol=0)


def test_hub_folder_shipping_old_phi3_code_loads_with_stock_classes(tmp_path, models_module):
    """Phi-3's hub folders carry an auto_map to their own (pre-transformers) code: without --trust-remote-code they
    load with transformers' Phi3 classes, as transformers itself does."""
    dense = CASES_BY_ID["phi3-gqa"].build()
    dense.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_phi3.Phi3Config",
                          "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = models_module.load_model(str(tmp_path), with_tokenizer=False)
    assert type(loaded.model).__module__ == "transformers.models.phi3.modeling_phi3"
    torch.testing.assert_close(logits(loaded.model), logits(dense), atol=ATOL, rtol=0)
