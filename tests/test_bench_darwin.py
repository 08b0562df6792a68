"""bench/darwin.py on a tiny model: baselines once, every search per seed, seeds composable across runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from test_bench_compare import BENCH, TINY


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("darwin", None)
    import darwin

    return darwin


def run(bench, root: Path, tmp: Path, name: str, *seeds: int, parts: str = "baselines,kl,ta,random",
        extra: tuple[str, ...] = ()) -> list[dict]:
    out = tmp / name / "out"
    bench.main(["--sparsities", "0.4", "--seeds", *map(str, seeds), "--parts", parts, "--generations", "1", "--eval-blocks", "2",
                "--recovery-tokens", "64", "--work", str(tmp / name / "work"), "--out", str(out),
                f"model.source={root / 'dense'}", f"data.source={root / 'corpus.txt'}", *TINY, *extra])
    return json.loads((out / "darwin.json").read_text())["rows"]


SEARCHES = ["evolution, KL-only", "evolution, training-aware", "random search"]
BASELINES = ["uniform (activation)", "uniform (OBS database)", "depth (ShortGPT)"]


@pytest.mark.slow  # about 40 s: three database-backed searches per seed, recovery of every model
def test_seeds_add_search_rows_and_compose_across_runs(bench, tiny_run_inputs, tmp_path):
    both = run(bench, tiny_run_inputs, tmp_path, "both", 0, 1)
    assert [(r["method"], r["seed"]) for r in both] == (
        [(m, "") for m in BASELINES] + [(m, 0) for m in SEARCHES] + [(m, 1) for m in SEARCHES])
    for r in both:
        assert r["block_sparsity"] == pytest.approx(0.4, abs=0.15), r["method"]
        assert r["KL recovered"] > 0 and r["ppl recovered"] > 1
        assert set(r["unseen one-shot"]) == set(r["unseen recovered"]) == {"news", "howto", "math"}
        assert {"unseen ppl one-shot", "held-back ppl one-shot", "held-back ppl recovered"} <= set(r)
    text = (tmp_path / "both" / "out" / "darwin.md").read_text()
    assert "| unseen ppl one-shot | held-back ppl one-shot |" in text
    assert "Searches over seeds" in text and "| 0.4 | random search | 2 |" in text
    work = tmp_path / "both" / "work"
    assert (work / "winners-0.4.json").exists() and not list(work.glob("winners-*seed*"))
    assert (work / "training-aware-0.4-seed1" / "state.json").exists()

    # seed 1 by itself, in parts over two invocations, gives the same rows
    run(bench, tiny_run_inputs, tmp_path, "alone", 1, parts="ta,random")
    alone = run(bench, tiny_run_inputs, tmp_path, "alone", 1, parts="baselines,kl")
    assert [r["method"] for r in alone] == BASELINES + SEARCHES
    assert alone[:3] == both[:3]
    assert alone[3:] == both[6:]
    parts = sorted(p.name for p in (tmp_path / "both" / "out" / "darwin_rows").iterdir())
    assert parts == ["0.4-baselines.json", "0.4-seed0.json", "0.4-seed1.json"]
    assert "Searches over seeds" not in (tmp_path / "alone" / "out" / "darwin.md").read_text()

    # a distilling brief training is its own search, beside the lm one: own state, own row, winners untouched
    winners = (work / "winners-0.4.json").read_text()
    kd = run(bench, tiny_run_inputs, tmp_path, "both", 0, parts="ta", extra=("search.train_loss=lm+kd",))
    assert [(r["method"], r["seed"]) for r in kd] == (
        [(m, "") for m in BASELINES] + [(m, 0) for m in SEARCHES[:2]] + [("evolution, training-aware (brief lm+kd)", 0),
                                                                        (SEARCHES[2], 0)] + [(m, 1) for m in SEARCHES])
    assert [r for r in kd if r["method"] in SEARCHES] == [r for r in both if r["method"] in SEARCHES]
    assert (work / "training-aware-lm+kd-0.4" / "state.json").exists()
    assert (work / "winners-0.4.json").read_text() == winners


@pytest.mark.parametrize("bad", [["--parts", "random"], ["--parts", "kl,nope"], ["--seeds", "1", "1"],
                                 ["search.train_pool=40"]])
def test_bad_options_are_refused(bench, bad, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(bad)
    assert stop.value.code == 2
    assert bad[0] in capsys.readouterr().err
