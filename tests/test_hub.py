"""Hub model ids and hub datasets, against a stand-in hub on 127.0.0.1 (`hub_standin.py`).

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import, so every download runs in a subprocess
with them set, through the real CLI or the library, as a user's process would.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hub_standin import StandInHub

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "acme/tiny-llama"
DATASET_ID = "acme/corpus"


def corpus_documents(inputs: Path) -> list[str]:
    return (inputs / "corpus.txt").read_text().split("\n\n")


def parquet_bytes(documents: list[str]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": documents, "row": list(range(len(documents)))}), buffer)
    return buffer.getvalue()


WIKITEXT_README = """---
configs:
- config_name: wikitext-2-raw-v1
  data_files:
  - split: test
    path: wikitext-2-raw-v1/test-*
  - split: train
    path: wikitext-2-raw-v1/train-*
---
"""
PAPER_ROWS = [" = Heading = ", "", " w1 w2 w3 .", "", " w4 w5", ""]  # empty rows too, as the raw split has
C4_ROWS = [f"document {i} w{i % 80}" for i in range(1200)]


@pytest.fixture(scope="module")
def hub(tiny_run_inputs, tmp_path_factory):
    """The tiny run's model (plus a pickle file that must not be fetched), a pickle-only model and the tiny
    corpus as a parquet dataset, served in the hub's layout."""
    stand_in = StandInHub()
    stand_in.add_model(MODEL_ID, tiny_run_inputs / "dense")
    stand_in.models[MODEL_ID].files["training_args.bin"] = b"pickle bytes never fetched"
    stand_in.models[MODEL_ID].files["consolidated.safetensors"] = b"another layout, never fetched"
    stand_in.models[MODEL_ID].__post_init__()
    pickled = tmp_path_factory.mktemp("pickled")
    small = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=24))
    small.config.save_pretrained(pickled)
    torch.save(small.state_dict(), pickled / "pytorch_model.bin")
    stand_in.add_model("acme/pickle-only", pickled)
    stand_in.add_model("acme/never-fetched", tiny_run_inputs / "dense")
    stand_in.gated.add("acme/gated")
    # the papers' sets in the layout of their hub repositories (WikiText-2's configs are declared in its README)
    stand_in.add_dataset("Salesforce/wikitext", {
        "README.md": WIKITEXT_README.encode(),
        "wikitext-2-raw-v1/test-00000-of-00001.parquet": parquet_bytes(PAPER_ROWS),
        "wikitext-2-raw-v1/train-00000-of-00001.parquet": parquet_bytes(["unused", ""])})
    stand_in.add_dataset("allenai/c4", {
        "en/c4-validation.00000-of-00008.json.gz": gzip.compress(
            "".join(json.dumps({"text": t, "url": "u"}) + "\n" for t in C4_ROWS).encode()),
        "en/c4-validation.00001-of-00008.json.gz": gzip.compress(b'{"text": "unused", "url": "u"}\n')})
    stand_in.add_dataset(DATASET_ID, {"data/train-00000-of-00001.parquet":
                                      parquet_bytes(corpus_documents(tiny_run_inputs))})
    stand_in.start()
    yield stand_in
    stand_in.stop()


def hub_env(hub: StandInHub, home: Path, offline: bool = False, endpoint: str | None = None) -> dict:
    """A user's environment for the stand-in: its endpoint, caches under `home`, online unless `offline`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint or hub.url, HF_HOME=str(home / "hf"), HF_HUB_CACHE=str(home / "hf" / "hub"),
               EVOPRUNE_CACHE=str(home / "evoprune"), PYTHONPATH=str(REPO_ROOT / "src"), OMP_NUM_THREADS="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


# One process runs a list of jobs, as a user's shell would run commands one after another, so the suite pays
# for importing torch and transformers once per environment: `cli` runs `evoprune.cli.main(argv)` and keeps its
# exit status and stderr; `logits` loads a model source and saves its logits on fixed ids; `blocks` saves the
# token blocks of each split of data sources given as config overrides; `paper` saves the papers' joined texts.
RUNNER = """
import contextlib, io, json, sys, torch
from evoprune.cli import main
from evoprune.config import load_config
from evoprune.data import data_blocks
from evoprune.models import load_model
from transformers import AutoTokenizer

results = []
for job in json.loads(sys.argv[1]):
    if job["kind"] == "cli":
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(job["argv"])
        results.append({"code": code, "stderr": err.getvalue()})
    elif job["kind"] == "logits":
        loaded = load_model(job["source"])
        torch.manual_seed(0)
        ids = torch.randint(0, loaded.model.config.vocab_size, (2, 16))
        with torch.no_grad():
            torch.save({"ids": ids, "logits": loaded.model(ids).logits}, job["out"])
        results.append({"path": str(loaded.path)})
    elif job["kind"] == "mark":  # a request the test finds in the stand-in's log, between other jobs' requests
        import os, urllib.error, urllib.request
        try:
            urllib.request.urlopen(os.environ["HF_ENDPOINT"] + "/mark/" + job["name"])
        except urllib.error.HTTPError:
            pass
        results.append({})
    elif job["kind"] == "paper":
        from evoprune.evaluation.paper_perplexity import PAPER_SETS, paper_text
        texts = {name: paper_text(PAPER_SETS[name]) for name in job["sets"]}
        open(job["out"], "w").write(json.dumps(texts))
        results.append({})
    else:
        tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
        blocks = {}
        for name, overrides in job["sources"].items():
            cfg = load_config(None, overrides + ["data.seq_len=32"])
            blocks[name] = {split: data_blocks(cfg, tokenizer, split, None) for split in ("calibration", "eval", "train")}
        torch.save(blocks, job["out"])
        results.append({})
print(json.dumps(results))
"""


def run_jobs(jobs: list[dict], env: dict, cwd: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


EVAL_FLAGS = ["eval.latency=false", "eval.unseen=false", "data.seq_len=32", "data.eval_blocks=2", "--quiet"]
BUDGET = 3000


def eval_argv(model: str, data: str, out: Path, *extra: str) -> dict:
    return {"kind": "cli", "argv": ["eval", "--model", model, "--data", data, "--out", str(out), *EVAL_FLAGS, *extra]}


@pytest.fixture(scope="module")
def online(hub, tiny_run_inputs, tmp_path_factory):
    """One process with the stand-in's endpoint: downloads, hub datasets, and the refusals that need the hub."""
    home = tmp_path_factory.mktemp("online")
    documents = corpus_documents(tiny_run_inputs)
    local = home / "corpus.parquet"
    local.write_bytes(parquet_bytes(documents))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_run_inputs / "dense")
    kept, tokens = [], 0  # the budget's rule, counted here independently: whole rows until BUDGET tokens
    for text in documents:
        kept.append(text)
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        if tokens >= BUDGET:
            break
    (home / "budget.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in kept))
    sources = {"hub": [f"data.source={DATASET_ID}"], "local": [f"data.source={local}"],
               "hub_budget": [f"data.source=hf:{DATASET_ID}", f"data.max_tokens={BUDGET}"],
               "hub_stream": [f"data.source={DATASET_ID}", f"data.max_tokens={BUDGET}", "data.streaming=true"],
               "local_budget": [f"data.source={home / 'budget.jsonl'}"]}
    corpus = str(tiny_run_inputs / "corpus.txt")
    dense = str(tiny_run_inputs / "dense")
    jobs = {"local_start": {"kind": "mark", "name": "local-start"},
            # unseen text on: its leak check reads the run's data (the genres themselves are not in this cache)
            "eval_local": eval_argv(dense, str(local), home / "eval-local", "eval.unseen=true"),
            "local_end": {"kind": "mark", "name": "local-end"},
            "logits": {"kind": "logits", "source": MODEL_ID, "out": str(home / "logits.pt")},
            "blocks": {"kind": "blocks", "tokenizer": dense, "sources": sources, "out": str(home / "blocks.pt")},
            "eval_hub": eval_argv(dense, DATASET_ID, home / "eval-hub", "eval.unseen=true"),
            "absent": eval_argv("acme/absent", corpus, home / "absent"),
            "pickle_only": eval_argv("acme/pickle-only", corpus, home / "pickle"),
            "gated": eval_argv("acme/gated", corpus, home / "gated"),
            "bad_revision": eval_argv(MODEL_ID, corpus, home / "bad-revision", "--revision", "v9"),
            "absent_dataset": eval_argv(dense, "acme/no-such-data", home / "absent-data"),
            "no_field": eval_argv(dense, DATASET_ID, home / "no-field", "data.text_field=body"),
            "paper": {"kind": "paper", "sets": ["wikitext2", "c4"], "out": str(home / "paper.json")}}
    results = dict(zip(jobs, run_jobs(list(jobs.values()), hub_env(hub, home), home)))
    return home, results, len(hub.requests)


@pytest.fixture(scope="module")
def offline(hub, tiny_run_inputs, online):
    """A second process with HF_HUB_OFFLINE=1 and the first one's caches."""
    home, _, _ = online
    jobs = {"logits": {"kind": "logits", "source": MODEL_ID, "out": str(home / "logits-offline.pt")},
            "blocks": {"kind": "blocks", "tokenizer": str(tiny_run_inputs / "dense"),
                       "sources": {"hub": [f"data.source={DATASET_ID}"]}, "out": str(home / "blocks-offline.pt")},
            "not_cached": eval_argv("acme/never-fetched", str(tiny_run_inputs / "corpus.txt"), home / "not-cached")}
    results = dict(zip(jobs, run_jobs(list(jobs.values()), hub_env(hub, home, offline=True), home)))
    return results, len(hub.requests)


def one_line_error(result: dict) -> str:
    assert result["code"] == 2, result["stderr"][-2000:]
    lines = [line for line in result["stderr"].splitlines() if line.startswith("evoprune: error:")]
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"][-2000:]
    return lines[0]


def test_hub_id_is_downloaded_then_loaded_offline_from_the_cache(hub, tiny_run_inputs, online, offline):
    home, results, requests_online = online
    served = LlamaForCausalLM.from_pretrained(tiny_run_inputs / "dense").eval()
    got = torch.load(home / "logits.pt")
    with torch.no_grad():
        assert torch.equal(got["logits"], served(got["ids"]).logits)
    folder = Path(results["logits"]["path"])
    assert folder.is_relative_to(home / "hf" / "hub")
    fetched = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in fetched and "tokenizer.json" in fetched
    assert "training_args.bin" not in fetched  # only safetensors, config and tokenizer files are downloaded
    assert "consolidated.safetensors" not in fetched

    offline_results, requests_after = offline
    assert Path(offline_results["logits"]["path"]) == folder
    assert torch.equal(torch.load(home / "logits-offline.pt")["logits"], got["logits"])
    assert requests_after == requests_online  # offline: not one request


def test_offline_with_nothing_cached_is_one_line(online, offline):
    line = one_line_error(offline[0]["not_cached"])
    assert "acme/never-fetched" in line and "not in the local HF cache" in line and "HF_HUB_OFFLINE" in line


@pytest.mark.parametrize("job, model_id, expected", [("absent", "acme/absent", "not found on"),
                                                     ("pickle_only", "acme/pickle-only", "only pickle weights"),
                                                     ("gated", "acme/gated", "is gated"),
                                                     ("bad_revision", MODEL_ID, "has no revision 'v9'"),
                                                     ("absent_dataset", "acme/no-such-data", "not found on")])
def test_missing_gated_pickle_only_or_bad_revision_is_one_line(online, job, model_id, expected):
    home, results, _ = online
    line = one_line_error(results[job])
    assert model_id in line and expected in line
    assert not list((home / "hf" / "hub").rglob("*.bin"))  # refused before any weight is fetched


def test_unreachable_hub_is_one_line(hub, tiny_run_inputs, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    [result] = run_jobs([eval_argv(MODEL_ID, str(tiny_run_inputs / "corpus.txt"), tmp_path / "run")],
                        hub_env(hub, tmp_path, endpoint=closed), tmp_path)
    line = one_line_error(result)
    assert MODEL_ID in line and "cannot reach" in line


def test_hub_dataset_gives_the_blocks_of_the_same_local_data(online, offline):
    home = online[0]
    got = torch.load(home / "blocks.pt")
    for split in ("calibration", "eval", "train"):
        assert torch.equal(got["hub"][split], got["local"][split])
        assert torch.equal(got["hub_budget"][split], got["local_budget"][split])
        assert torch.equal(got["hub_stream"][split], got["local_budget"][split])
    assert got["hub_budget"]["train"].numel() < got["hub"]["train"].numel()
    # offline, from the token cache under the commit read online (no request: see the model test)
    assert torch.equal(torch.load(home / "blocks-offline.pt")["hub"]["eval"], got["hub"]["eval"])


def test_hub_dataset_through_the_cli_scores_as_the_local_file(online):
    home, results, _ = online
    assert results["eval_hub"]["code"] == 0 and results["eval_local"]["code"] == 0, results["eval_hub"]["stderr"]
    hub_metrics, local_metrics = (json.loads((home / name / "metrics.json").read_text())
                                  for name in ("eval-hub", "eval-local"))
    assert hub_metrics["model"]["perplexity"] == local_metrics["model"]["perplexity"]
    assert hub_metrics["eval_tokens"] == local_metrics["eval_tokens"]


def test_missing_text_field_of_a_hub_dataset_is_one_line(online):
    line = one_line_error(online[1]["no_field"])
    assert DATASET_ID in line and "'body'" in line and "text" in line


def test_the_papers_sets_are_read_from_the_hub_as_the_papers_read_them(online):
    texts = json.loads((online[0] / "paper.json").read_text())
    assert texts["wikitext2"] == "\n\n".join(PAPER_ROWS)
    assert texts["c4"] == " ".join(C4_ROWS[:1100])


def test_a_local_model_and_local_data_make_no_request_online(hub, online):
    """HF_HUB_OFFLINE is no longer forced: a run on local files must still not touch the hub."""
    start, end = hub.requests.index("GET /mark/local-start"), hub.requests.index("GET /mark/local-end")
    assert end == start + 1, hub.requests[start:end + 1]
    assert online[1]["eval_local"]["code"] == 0
