"""The package as users get it: a built wheel installs, finds its shipped configs, declares what it imports."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from evoprune.config import SHIPPED_CONFIGS, ConfigError, config_file, load_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "evoprune"
OPTIONAL = {"llama_cpp", "mlx", "mlx_lm"}  # the `serving` extra: imported only when an engine is asked for


def third_party_imports() -> set[str]:
    """The top-level names of every non-stdlib module the package's sources import."""
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "evoprune"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {normalized(re.split(r"[<>=!~;\[ ]", r, 1)[0]) for r in project["dependencies"]}
    extras = {normalized(re.split(r"[<>=!~;\[ ]", r, 1)[0]) for rs in project["optional-dependencies"].values()
              for r in rs}
    providers = importlib.metadata.packages_distributions()
    for name in sorted(third_party_imports()):
        dists = {normalized(d) for d in providers.get(name, [])}
        assert dists, f"no installed distribution provides {name}"
        wanted = extras if name in OPTIONAL else declared
        assert dists & wanted, f"{name} (from {sorted(dists)}) is imported but not in pyproject's dependencies"
    imported = {normalized(d) for name in third_party_imports() for d in providers.get(name, [])}
    assert declared <= imported, f"declared but never imported: {sorted(declared - imported)}"


def test_sources_parse_as_the_lowest_stated_python():
    lowest = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = map(int, re.fullmatch(r">=(\d+)\.(\d+)", lowest).groups())
    for path in SRC.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(major, minor))


def test_a_shipped_config_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(shipped_configs()) >= {"smollm2_uniform50", "smollm2_quick_debug", "darwinlm_reference"}
    for spelling in ("smollm2_uniform50", "smollm2_uniform50.yaml", "configs/smollm2_uniform50.yaml"):
        assert config_file(spelling) == SHIPPED_CONFIGS / "smollm2_uniform50.yaml"
    assert load_config("smollm2_uniform50").data.seq_len == 512
    (tmp_path / "smollm2_uniform50.yaml").write_text("data:\n  seq_len: 64\n")  # a file of that name wins
    assert load_config("smollm2_uniform50.yaml").data.seq_len == 64
    with pytest.raises(ConfigError, match="config file not found: nope .*shipped config: darwinlm_reference, "):
        load_config("nope")


def test_the_repository_configs_folder_is_the_shipped_one():
    assert (ROOT / "configs").resolve() == SHIPPED_CONFIGS.resolve()
    for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        first = path.read_text().splitlines()[:2]
        assert any(f"--config {path.stem} " in line for line in first), f"{path.name} starts with its command"


UNMET = """
import importlib.metadata as m, json
from packaging.requirements import Requirement
unmet = []
for text in m.requires("evoprune"):
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an optional extra
    try:
        version = m.version(req.name)
    except m.PackageNotFoundError:
        unmet.append(f"{req.name} missing")
        continue
    if not req.specifier.contains(version, prereleases=True):
        unmet.append(f"{req.name} {version} not {req.specifier}")
print(json.dumps(unmet))
"""


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _pip_check(python, cwd: Path, env: dict) -> set[str]:
    """The problems `pip check` reports for the environment of `python` (it exits 1 when there are some)."""
    done = subprocess.run([str(python), "-m", "pip", "check"], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode in (0, 1) and (done.returncode == 0) == (not done.stdout.strip()), done.stderr
    return set(done.stdout.splitlines())


@pytest.mark.slow
def test_the_built_wheel_installs_and_runs_outside_the_source_tree(tiny_run_inputs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    # Built from a copy, so the build leaves no build/ or *.egg-info in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
          source], tmp_path, env)
    wheel, = (tmp_path / "dist").glob("evoprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in shipped_configs():
        assert f"evoprune/configs/{config}.yaml" in names
    assert "evoprune/serving/nemotron_remote_config.py" in names and "evoprune/arch/hf/modeling_evoprune.py" in names

    # --system-site-packages: torch, transformers and the rest come from this machine (there is no index to
    # install them from, and copying gigabytes per test run is pointless). The machine's own evoprune (an
    # editable install of a checkout) is visible there too; the venv's site-packages come first on sys.path,
    # which the __file__ check below verifies. --without-pip: the machine's pip installs into the venv, and
    # no bundled older setuptools hides the machine's (torch requires a newer one).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp_path, env)
    python, evoprune = venv / "bin" / "python", venv / "bin" / "evoprune"
    _run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--quiet", wheel], tmp_path, env)

    where = tmp_path / "elsewhere"
    where.mkdir()
    probe = ("import evoprune, json, importlib.metadata as m; from evoprune.config import SHIPPED_CONFIGS; "
             "print(json.dumps([evoprune.__file__, str(SHIPPED_CONFIGS), m.version('evoprune'), "
             "str(m.distribution('evoprune').locate_file(''))]))")
    package, configs, version, installed_at = json.loads(_run([python, "-c", probe], where, env).stdout)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], where,
                     env).stdout.strip())
    assert Path(package).resolve().is_relative_to(site.resolve()), package
    assert not Path(package).resolve().is_relative_to(ROOT)
    assert Path(configs).resolve().is_relative_to(site.resolve()) and Path(installed_at).resolve() == site.resolve()
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

    assert "darwin" in _run([evoprune, "--help"], where, env).stdout
    # pip check in the venv reports nothing that the machine's own environment does not already report
    # (there it may flag packages unrelated to evoprune), and evoprune's own requirements are all met.
    found, before = (_pip_check(interpreter, where, env) for interpreter in (python, sys.executable))
    assert found <= before, found - before
    assert json.loads(_run([python, "-c", UNMET], where, env).stdout) == []

    out = where / "run"  # the shipped quick config's short blocks and few repeats, on the tiny model
    _run([evoprune, "prune", "--config", "smollm2_quick_debug", "--model", tiny_run_inputs / "dense", "--data",
          tiny_run_inputs / "corpus.txt", "--out", out, "--quiet"], where, env)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pruned"]["block_params"] < metrics["dense"]["block_params"]
    shipped = load_config(SHIPPED_CONFIGS / "smollm2_quick_debug.yaml")
    assert shipped.data.seq_len != load_config(None).data.seq_len  # so the run shows which file it read
    run = load_config(out / "config.yaml")
    assert (run.data.seq_len, run.data.calibration_blocks, run.eval.repeats, run.prune.method) == (
        shipped.data.seq_len, shipped.data.calibration_blocks, shipped.eval.repeats, shipped.prune.method)
