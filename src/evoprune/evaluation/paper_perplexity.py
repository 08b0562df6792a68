"""WikiText-2 and C4 perplexity computed as the pruning papers do (SparseGPT's `datautils.py`, reused by
LLM-Pruner, Wanda, DarwinLM and most others), so a figure can be set beside a published one.

- WikiText-2: the `wikitext-2-raw-v1` test split, every row (empty ones too) joined with "\\n\\n", tokenized once
  as one text (the tokenizer's own special tokens, so a BOS at the start for Llama), cut into consecutive
  non-overlapping windows of `seq_len` tokens; the tail shorter than a window is dropped.
- C4: the first 1,100 documents of the validation shard `en/c4-validation.00000-of-00008.json.gz` of
  `allenai/c4` joined with " ", tokenized once, the first 256 windows of `seq_len` tokens.

Each window is scored on its own (no context carried over), predicting tokens 2..seq_len; the perplexity is
exp of the mean over windows of each window's mean NLL, which is SparseGPT's exp(sum(loss * seqlen) /
(windows * seqlen)). `seq_len` is 2048 (the papers' figure for Llama models), or the model's
`max_position_embeddings` when that is smaller.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SEQ_LEN = 2048


@dataclass(frozen=True)
class PaperSet:
    """One of the papers' perplexity sets: where it lives on the hub and how its rows become one text."""

    name: str
    title: str
    repo_id: str
    config: str | None
    split: str
    data_files: str | None
    separator: str
    documents: int | None  # rows read (C4: the first 1,100), None = all
    windows: int | None  # windows scored (C4: the first 256), None = all


PAPER_SETS = {
    "wikitext2": PaperSet("wikitext2", "WikiText-2", "Salesforce/wikitext", "wikitext-2-raw-v1", "test", None,
                          "\n\n", None, None),
    "c4": PaperSet("c4", "C4", "allenai/c4", None, "validation", "en/c4-validation.00000-of-00008.json.gz", " ",
                   1100, 256),
}


def paper_sets(names: str) -> list[PaperSet]:
    """The sets of a comma list such as `wikitext2,c4`.

    Raises:
        UserError: for an unknown name.
    """
    chosen = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in PAPER_SETS]
    if unknown or not chosen:
        raise UserError(f"unknown paper perplexity set {', '.join(unknown) or names!r}; choose from "
                        f"{', '.join(PAPER_SETS)} (a comma list)")
    return [PAPER_SETS[n] for n in dict.fromkeys(chosen)]


def paper_text(paper: PaperSet, source: str | None = None) -> str:
    """The set's rows joined as the papers join them, from `source` (a local copy) or from the hub.

    A local copy is a .txt file (taken as the joined text itself), a .parquet / .jsonl / .json(.gz) file or a
    datasets.save_to_disk folder holding a `text` column (e.g. the hub's own parquet or json.gz file).

    Raises:
        UserError: when the data is neither at `source` nor readable from the hub (or its cache), saying how to
            get it.
    """
    if source is not None:
        rows = _local_rows(Path(source).expanduser(), paper)
    else:
        rows = _hub_rows(paper)
    if isinstance(rows, str):
        return rows
    rows = rows[:paper.documents] if paper.documents is not None else rows
    return paper.separator.join(rows)


def _hub_rows(paper: PaperSet) -> list[str]:
    import datasets

    from ..hub import hub_errors, offline

    try:
        with hub_errors("dataset", paper.repo_id):
            if paper.data_files:
                rows = datasets.load_dataset(paper.repo_id, data_files={paper.split: paper.data_files},
                                             split=paper.split)
            else:
                rows = datasets.load_dataset(paper.repo_id, paper.config, split=paper.split)
            return list(rows["text"])
    except UserError as e:
        how = ("run once with network access (HF_HUB_OFFLINE unset) to cache it" if offline()
               else f"check the network ({e})")
        raise UserError(f"{paper.title} is not available ({paper.repo_id}"
                        f"{'/' + (paper.config or paper.data_files) if paper.config or paper.data_files else ''}, "
                        f"{paper.split} split): {how}, or give a local copy with eval.{paper.name}_source") from None


def _local_rows(path: Path, paper: PaperSet) -> list[str] | str:
    if not path.exists():
        hub_file = paper.data_files or f"the {paper.split} parquet"
        raise UserError(f"{paper.title} copy not found: {path}; give the hub's file ({hub_file}), a save_to_disk "
                        "folder or a .txt file")
    name = path.name.lower()
    try:
        if path.is_dir():
            import datasets

            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[paper.split] if paper.split in loaded else next(iter(loaded.values()))
            return list(loaded["text"])
        if name.endswith(".txt"):
            return path.read_text(encoding="utf-8")
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=["text"]).column("text").to_pylist()
        if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
            import datasets

            return list(datasets.load_dataset("json", data_files=str(path), split="train")["text"])
    except Exception as e:  # pyarrow, datasets and json raise many types for a damaged or foreign file
        raise UserError(f"cannot read the {paper.title} copy {path}: {str(e).splitlines()[0] if str(e) else e!r} "
                        "(it needs a 'text' column)") from None
    raise UserError(f"unknown format of the {paper.title} copy {path}; give .parquet, .json(l)(.gz), .txt or a "
                    "save_to_disk folder")


def paper_seq_len(model, seq_len: int = DEFAULT_SEQ_LEN) -> int:
    """`seq_len`, or the model's `max_position_embeddings` when that is smaller."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(seq_len, limit) if limit else seq_len


def paper_windows(tokenizer, text: str, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """`[n, seq_len]` consecutive, non-overlapping windows of `text` tokenized once, the short tail dropped."""
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
    n = ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise UserError(f"the text holds {ids.numel()} tokens, less than one window of {seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)


@torch.no_grad()
def windows_perplexity(model, windows: torch.Tensor, batch_size: int = 1) -> float:
    """exp(mean over windows of each window's mean next-token NLL), each window scored without other context."""
    device = next(model.parameters()).device
    means = []
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size].to(device)
        logits = model(batch, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
        nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (B, T-1)
        means.extend(nll.mean(dim=1).tolist())
    return math.exp(sum(means) / len(means))


def paper_perplexity(model, tokenizer, paper: PaperSet, text: str, seq_len: int = DEFAULT_SEQ_LEN,
                     batch_size: int = 1) -> dict:
    """The set's perplexity of `model` on `text` (from `paper_text`), with the facts that make it comparable."""
    length = paper_seq_len(model, seq_len)
    windows = paper_windows(tokenizer, text, length, paper.windows)
    log.info("%s perplexity: %d windows of %d tokens", paper.title, windows.shape[0], length)
    return {"perplexity": windows_perplexity(model, windows, batch_size), "windows": int(windows.shape[0]),
            "seq_len": length}
