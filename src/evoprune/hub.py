"""Models and datasets named by a Hugging Face hub id, fetched the way the ecosystem does.

`huggingface_hub` does the work: the token (`HF_TOKEN`), the cache (`HF_HOME`, `HF_HUB_CACHE`) and the endpoint
(`HF_ENDPOINT`) come from its usual environment variables. With `HF_HUB_OFFLINE=1` nothing is downloaded and an
id is looked up in the local cache only. Every failure becomes a one-line UserError naming the id.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells repository ids
# What a causal LM needs from its repository: config, weights, tokenizer (json, sentencepiece, BPE merges, tiktoken).
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt"]
PICKLE_WEIGHTS = (".bin", ".pt", ".pth")
CODE_FILES = ["*.py"]  # only with trust_remote_code
# Copies of the weights in other layouts that some repositories ship beside the HF ones (Mistral's consolidated
# file, Meta's original/ folder): never read, so never fetched.
OTHER_LAYOUTS = ["consolidated*", "original/*"]


def is_repo_id(source: str) -> bool:
    return bool(REPO_ID.match(source)) and not source.startswith((".", "/", "~"))


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, looked up now (its constants are read once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE")


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def model_snapshot(repo_id: str, revision: str | None = None, allow_pickle: bool = False,
                   trust_remote_code: bool = False) -> Path:
    """The local folder of model `repo_id` at `revision` (default: main), downloaded on first use.

    Only configs, safetensors weights and tokenizer files are downloaded (pickle weights only when the repository
    has no safetensors and `allow_pickle`; `*.py` only with `trust_remote_code`).

    Raises:
        UserError: offline and not cached; not found, gated or private without a token; a pickle-only repository
            without `allow_pickle`; the hub unreachable and nothing cached.
    """
    from huggingface_hub import snapshot_download

    if offline():
        cached = _cached_snapshot(repo_id, revision, allow_pickle, trust_remote_code)
        if cached is None:
            raise UserError(f"model {repo_id!r} is not a local folder and not in the local HF cache (HF_HUB_OFFLINE "
                            "is set, so nothing is downloaded); pass a folder or 'smollm2-135m', or unset "
                            "HF_HUB_OFFLINE to download it")
        return cached
    with hub_errors("model", repo_id, revision):
        try:
            patterns = _model_patterns(repo_id, revision, allow_pickle, trust_remote_code)
        except Exception as e:
            cached = _cached_snapshot(repo_id, revision, allow_pickle, trust_remote_code) \
                if _is_connection_error(e) else None
            if cached is None:
                raise
            log.warning("cannot reach %s; using the cached copy of %s", endpoint(), repo_id)
            return cached
        log.info("fetching %s%s from %s (cache: %s)", repo_id, f"@{revision}" if revision else "", endpoint(),
                 cache_dir() or "the HF default")
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      ignore_patterns=OTHER_LAYOUTS, cache_dir=cache_dir()))


def _cached_snapshot(repo_id: str, revision: str | None, allow_pickle: bool, trust_remote_code: bool) -> Path | None:
    """The complete cached folder of `repo_id` at `revision` holding the files a download would have fetched."""
    from huggingface_hub import snapshot_download

    patterns = MODEL_FILES + (CODE_FILES if trust_remote_code else [])
    for allow in [patterns] + ([patterns + [f"*{s}" for s in PICKLE_WEIGHTS]] if allow_pickle else []):
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=cache_dir(),
                                          allow_patterns=allow, ignore_patterns=OTHER_LAYOUTS))
        except Exception:  # not cached, or cached incomplete (an interrupted download)
            continue
    return None


def _model_patterns(repo_id: str, revision: str | None, allow_pickle: bool, trust_remote_code: bool) -> list[str]:
    """The allow_patterns for `repo_id`, from its file list; a pickle-only repository is refused here, before any
    weight is downloaded."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision)
    files = [s.rfilename for s in info.siblings or [] if not s.rfilename.startswith(("consolidated", "original/"))]
    patterns = MODEL_FILES + (CODE_FILES if trust_remote_code else [])
    if any(f.endswith(".safetensors") for f in files):
        return patterns
    pickles = [f for f in files if f.endswith(PICKLE_WEIGHTS)]
    if not pickles:
        raise UserError(f"model {repo_id!r} on the hub has no weight files (*.safetensors)")
    if not allow_pickle:
        raise UserError(f"model {repo_id!r} on the hub has only pickle weights ({pickles[0]}), which can run code when "
                        "loaded; pass --allow-pickle if you trust it")
    log.warning("downloading pickle weights of %s (--allow-pickle)", repo_id)
    return patterns + [f"*{suffix}" for suffix in PICKLE_WEIGHTS]


@contextmanager
def hub_errors(kind: str, repo_id: str, revision: str | None = None):
    """Turns huggingface_hub's and the network's exceptions inside into one-line UserErrors naming `kind` `repo_id`."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:  # huggingface_hub, datasets and the HTTP client raise many types
        raise UserError(_message(e, kind, repo_id, revision)) from None


def _message(error: BaseException, kind: str, repo_id: str, revision: str | None) -> str:
    from huggingface_hub import errors

    what = f"{kind} {repo_id!r}"
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, errors.GatedRepoError):
        return f"{what} is gated: accept its conditions on the hub page and set HF_TOKEN to a token that may read it"
    if isinstance(error, errors.RevisionNotFoundError):
        return f"{what} has no revision {revision!r} on {endpoint()}; give a branch, tag or commit it has"
    if isinstance(error, errors.RepositoryNotFoundError):
        local = "folder" if kind == "model" else "path"
        return (f"{what} is not a local {local} and not found on {endpoint()} (a private one needs HF_TOKEN set "
                "to a token that may read it); check the path or id")
    if isinstance(error, errors.LocalEntryNotFoundError) or _is_connection_error(error):
        return (f"cannot reach {endpoint()} to download {what}, and it is not in the local HF cache; check the "
                "network (or HF_ENDPOINT), or pass a local folder")
    if isinstance(error, errors.HfHubHTTPError):
        return f"cannot download {what} from {endpoint()}: {first}"
    return f"cannot download {what}: {first}"


def _is_connection_error(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectError", "ConnectionError", "TimeoutException", "Timeout", "OfflineModeIsEnabled",
                         "ConnectTimeout", "ReadTimeout", "NetworkError"})
