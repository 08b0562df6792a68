"""A hub dataset as a text source: `owner/name` (or `hf:name`) read with `datasets.load_dataset`.

One split of one configuration is read, row by row, up to a token budget (whole documents, counted with the
model's tokenizer); evoprune then cuts those documents into its own calibration / train / eval splits like any
other source. Streaming reads only what the budget needs, without downloading the dataset whole.

The token-block cache is keyed by the dataset's commit: it is resolved on the hub once per revision and
remembered, so a later run with HF_HUB_OFFLINE=1 reads the cached blocks without the network.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..assets import cache_dir
from ..atomic import staged_file
from ..errors import UserError
from ..hub import hub_errors, is_repo_id, offline

log = logging.getLogger(__name__)

PREFIX = "hf:"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
LOCAL_SUFFIXES = (".txt", ".json", ".jsonl", ".gz", ".parquet", ".arrow")


def is_hub_source(source: str) -> bool:
    """`hf:<id>`, or an `owner/name` id that is neither a local path nor a file name of a format read locally."""
    if source.startswith(PREFIX):
        return True
    local_name = source.lower().endswith(LOCAL_SUFFIXES) or Path(source.split("/")[0]).expanduser().is_dir()
    return is_repo_id(source) and not local_name and not Path(source).expanduser().exists()


@dataclass(frozen=True)
class HubDataset:
    """Which rows of which hub dataset, and how many tokens of them (see DataConfig's fields of the same names)."""

    repo_id: str
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    streaming: bool = False
    max_tokens: int | None = None
    revision: str | None = None

    @classmethod
    def of(cls, source: str, data=None, text_field: str = "text") -> "HubDataset":
        """The hub dataset `source` names, read as `data` (a DataConfig; None: the whole train split)."""
        repo_id = source[len(PREFIX):] if source.startswith(PREFIX) else source
        if not repo_id:
            raise UserError(f"data source {source!r} names no dataset; give hf:<name> or owner/name")
        if data is None:
            return cls(repo_id, text_field=text_field)
        return cls(repo_id, data.hub_config, data.hub_split, data.text_field, data.streaming, data.max_tokens,
                   data.revision)

    def describe(self) -> str:
        parts = [self.repo_id, self.config, self.split]
        return "/".join(p for p in parts if p) + (f"@{self.revision}" if self.revision else "")


def hub_of(source: str, data=None, text_field: str = "text") -> HubDataset | None:
    """The hub dataset `source` names, read as `data` (a DataConfig) says; None when `source` is not one."""
    return HubDataset.of(source, data, text_field) if is_hub_source(source) else None


def hub_fingerprint(dataset: HubDataset) -> str:
    """What determines the documents read: the dataset's commit, configuration, split, field and budget."""
    return "|".join(["hub", dataset.repo_id, dataset.config or "", dataset.split, dataset_commit(dataset),
                     dataset.text_field, str(dataset.max_tokens)])


def dataset_commit(dataset: HubDataset) -> str:
    """The commit `dataset.revision` (default main) points to: asked of the hub, or remembered from an earlier run
    when offline."""
    revision = dataset.revision or "main"
    if COMMIT.match(revision):
        return revision
    memo = cache_dir() / "hub-datasets" / (hashlib.sha256(f"{dataset.repo_id}@{revision}".encode()).hexdigest()[:32]
                                           + ".commit")
    if offline():
        if memo.is_file():
            return memo.read_text().strip()
        raise UserError(f"dataset {dataset.repo_id!r} has not been read before and HF_HUB_OFFLINE is set; unset "
                        "HF_HUB_OFFLINE once to download it, or pass a local file or save_to_disk folder")
    from huggingface_hub import HfApi

    from ..hub import endpoint

    with hub_errors("dataset", dataset.repo_id, dataset.revision):
        commit = HfApi(endpoint=endpoint()).dataset_info(dataset.repo_id, revision=revision).sha
    with staged_file(memo) as tmp:
        tmp.write_text(commit)
    return commit


def hub_documents(dataset: HubDataset, tokenizer) -> list[str]:
    """The non-empty, stripped texts of `dataset`'s rows in order, up to `max_tokens` tokens of `tokenizer`.

    Raises:
        UserError: for a dataset, configuration or split that cannot be read, a missing text field, or
            streaming without a token budget.
    """
    import datasets

    if dataset.streaming and dataset.max_tokens is None:
        raise UserError(f"streaming dataset {dataset.repo_id!r} needs a token budget: set data.max_tokens")
    commit = dataset_commit(dataset)
    with hub_errors("dataset", dataset.repo_id, dataset.revision):
        rows = datasets.load_dataset(dataset.repo_id, dataset.config, split=dataset.split, revision=commit,
                                     streaming=dataset.streaming)
        names = rows.column_names if rows.column_names is not None else list(next(iter(rows)).keys())
        if dataset.text_field not in names:
            raise UserError(f"dataset {dataset.describe()} has no field {dataset.text_field!r}; available fields: "
                            f"{', '.join(names)}; choose one with data.text_field")
        documents, tokens = [], 0
        for row in rows:
            text = row[dataset.text_field]
            if text is not None and not isinstance(text, str):
                raise UserError(f"field {dataset.text_field!r} of dataset {dataset.describe()} is a "
                                f"{type(text).__name__}, not text; choose a text field with data.text_field")
            if not text or not text.strip():
                continue
            documents.append(text.strip())
            if dataset.max_tokens is not None:
                tokens += len(tokenizer(documents[-1], add_special_tokens=False)["input_ids"]) + 1
                if tokens >= dataset.max_tokens:
                    break
    if not documents:
        raise UserError(f"dataset {dataset.describe()} holds no non-empty {dataset.text_field!r} texts")
    log.info("read %d documents from hub dataset %s (commit %s)", len(documents), dataset.describe(), commit[:12])
    return documents
