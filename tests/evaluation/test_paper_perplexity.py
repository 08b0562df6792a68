"""WikiText-2 / C4 perplexity as the papers compute it, on a tiny stand-in text and model."""

from __future__ import annotations

import gzip
import json
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from evoprune.errors import UserError
from evoprune.evaluation.paper_perplexity import (
    PAPER_SETS,
    paper_perplexity,
    paper_seq_len,
    paper_sets,
    paper_text,
    paper_windows,
    windows_perplexity,
)
from evoprune_tests import CORPUS_WORDS


def rows(n: int, seed: int = 0) -> list[str]:
    """WikiText-like rows: text lines, with empty rows between them as the raw split has."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out += [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(5, 30))), ""]
    return out


@pytest.fixture(scope="module")
def dense(tiny_run_inputs):
    return (LlamaForCausalLM.from_pretrained(tiny_run_inputs / "dense").eval(),
            AutoTokenizer.from_pretrained(tiny_run_inputs / "dense"))


def test_wikitext_rows_are_joined_with_blank_lines_empty_rows_included(tmp_path):
    texts = rows(20)
    pq.write_table(pa.table({"text": texts}), tmp_path / "test-00000-of-00001.parquet")
    joined = paper_text(PAPER_SETS["wikitext2"], str(tmp_path / "test-00000-of-00001.parquet"))
    assert joined == "\n\n".join(texts)
    (tmp_path / "joined.txt").write_text(joined)
    assert paper_text(PAPER_SETS["wikitext2"], str(tmp_path / "joined.txt")) == joined


def test_c4_takes_the_first_1100_documents_joined_with_spaces(tmp_path):
    texts = [t for t in rows(1200, seed=1) if t]
    with gzip.open(tmp_path / "c4-validation.00000-of-00008.json.gz", "wt") as f:
        f.writelines(json.dumps({"text": t, "url": "u"}) + "\n" for t in texts)
    joined = paper_text(PAPER_SETS["c4"], str(tmp_path / "c4-validation.00000-of-00008.json.gz"))
    assert joined == " ".join(texts[:1100])


def test_windows_are_consecutive_slices_of_one_tokenization(dense):
    _, tokenizer = dense
    text = "\n\n".join(rows(60))
    ids = tokenizer(text)["input_ids"]
    windows = paper_windows(tokenizer, text, 32)
    assert windows.shape == (len(ids) // 32, 32)
    for i in range(windows.shape[0]):
        assert windows[i].tolist() == ids[i * 32:(i + 1) * 32]
    assert paper_windows(tokenizer, text, 32, max_windows=3).shape == (3, 32)


def test_perplexity_is_exp_of_the_mean_window_nll(dense):
    model, tokenizer = dense
    windows = paper_windows(tokenizer, "\n\n".join(rows(60)), 32)
    with torch.no_grad():  # independently: log-softmax and gather, one window at a time
        nll = []
        for window in windows:
            logp = torch.log_softmax(model(window[None]).logits[0, :-1].double(), dim=-1)
            nll.append(-logp.gather(1, window[1:, None]).mean().item())
    expected = math.exp(sum(nll) / len(nll))
    assert windows_perplexity(model, windows, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_seq_len_is_2048_or_the_model_maximum(dense):
    model, tokenizer = dense
    limit = model.config.max_position_embeddings
    assert paper_seq_len(model) == min(2048, limit)
    assert paper_seq_len(model, limit // 2) == limit // 2
    text = " ".join(rows(200))
    assert len(tokenizer(text)["input_ids"]) > 256 * 8  # more than C4's 256 windows
    result = paper_perplexity(model, tokenizer, PAPER_SETS["c4"], text, seq_len=8, batch_size=64)
    assert result["seq_len"] == 8 and result["windows"] == PAPER_SETS["c4"].windows == 256


def test_unknown_set_and_missing_copy_are_refused(tmp_path):
    with pytest.raises(UserError, match="unknown paper perplexity set"):
        paper_sets("wikitext2,ptb")
    assert [p.name for p in paper_sets("c4, wikitext2,c4")] == ["c4", "wikitext2"]
    with pytest.raises(UserError, match="copy not found"):
        paper_text(PAPER_SETS["wikitext2"], str(tmp_path / "absent.parquet"))


def test_offline_without_the_data_says_how_to_get_it():
    # the suite runs with HF_HUB_OFFLINE=1 (conftest.py) and this machine has no hub copy of WikiText-2
    with pytest.raises(UserError, match="not available.*HF_HUB_OFFLINE unset.*eval.wikitext2_source"):
        paper_text(PAPER_SETS["wikitext2"])


def test_eval_reports_the_papers_perplexity(tiny_run_inputs, tmp_path, dense):
    from evoprune.cli import main

    texts = rows(80)
    pq.write_table(pa.table({"text": texts}), tmp_path / "wiki.parquet")
    out = tmp_path / "run"
    code = main(["eval", "--model", str(tiny_run_inputs / "dense"), "--data", str(tiny_run_inputs / "corpus.txt"),
                 "--paper-ppl", "wikitext2", f"eval.wikitext2_source={tmp_path / 'wiki.parquet'}",
                 "eval.paper_seq_len=32", "eval.latency=false", "eval.unseen=false", "data.seq_len=32",
                 "data.eval_blocks=2", "--out", str(out), "--quiet"])
    assert code == 0
    reported = json.loads((out / "metrics.json").read_text())["paper_perplexity"]["model"]["wikitext2"]
    model, tokenizer = dense
    windows = paper_windows(tokenizer, "\n\n".join(texts), 32)
    assert reported["windows"] == windows.shape[0] and reported["seq_len"] == 32
    assert reported["perplexity"] == pytest.approx(windows_perplexity(model, windows), rel=1e-6)
    assert "WikiText-2" in (out / "report.md").read_text()
