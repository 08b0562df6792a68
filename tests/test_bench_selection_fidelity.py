"""bench/selection_fidelity.py on a tiny model: every signal measured per genotype, saved figures resumed."""

from __future__ import annotations

import json
import sys

import pytest

from test_bench_compare import BENCH, TINY


@pytest.fixture
def fidelity(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("selection_fidelity", None)
    import selection_fidelity

    return selection_fidelity


def run(fidelity, root, tmp, *extra):
    fidelity.main(["--sparsity", "0.4", "--random", "3", "--eval-blocks", "2", "--recovery-tokens", "64",
                   "--work", str(tmp / "work"), "--out", str(tmp / "out"), *extra,
                   f"model.source={root / 'dense'}", f"data.source={root / 'corpus.txt'}", *TINY])
    return json.loads((tmp / "out" / "selection_fidelity-0.4.json").read_text())


@pytest.mark.slow  # about 20 s: a database, then brief training and recovery of four genotypes
def test_signals_are_measured_per_genotype_and_resumed(fidelity, tiny_run_inputs, tmp_path):
    first = run(fidelity, tiny_run_inputs, tmp_path)
    names = [r["genotype"] for r in first["rows"]]
    assert names[0] == "uniform" and 2 <= len(names) <= 4 and len(set(names)) == len(names)
    assert [a["signal"] for a in first["agreement"]] == ["KL one-shot", "KL brief lm", "KL brief lm+kd"]
    for r in first["rows"]:
        assert r["KL brief lm+kd"] != r["KL one-shot"] and r["KL recovered (held-out)"] > 0
    for a in first["agreement"]:
        assert a["pick"] in names and a["regret (KL)"] >= 0
    assert (tmp_path / "out" / "selection_fidelity-0.4.png").stat().st_size > 0

    # figures already saved are read back, not measured again; other settings measure anew
    store = tmp_path / "work" / "fidelity-0.4-seed0.json"
    saved = json.loads(store.read_text())
    saved["rows"]["uniform"]["KL one-shot"] = 123.0
    store.write_text(json.dumps(saved))
    assert run(fidelity, tiny_run_inputs, tmp_path)["rows"][0]["KL one-shot"] == 123.0
    again = run(fidelity, tiny_run_inputs, tmp_path, "--recovery-lr", "0.0002")
    assert again["rows"][0]["KL one-shot"] == pytest.approx(first["rows"][0]["KL one-shot"])

    # a search's winners join the set, with offspring of the first one (one selection's pool)
    winner = json.loads(store.read_text())["rows"][names[-1]]["genotype"]
    (tmp_path / "winners.json").write_text(json.dumps({"winners": {"w": {"genotype": winner}}}))
    pool = run(fidelity, tiny_run_inputs, tmp_path, "--winners", str(tmp_path / "winners.json"), "--offspring", "3")
    added = [r["genotype"] for r in pool["rows"]][len(names):]
    assert added and all(n.startswith("offspring") and n.endswith("of w") for n in added)

    # a brief training on other blocks is another signal of the same genotypes; nothing else is measured again
    saved = json.loads(store.read_text())
    saved["rows"]["uniform"]["KL one-shot"] = 123.0
    store.write_text(json.dumps(saved))
    run(fidelity, tiny_run_inputs, tmp_path, "--brief-offset", "2", "--brief-losses", "lm", "--random", "1")
    moved = json.loads((tmp_path / "out" / "selection_fidelity-0.4-offset2.json").read_text())
    assert [a["signal"] for a in moved["agreement"]] == ["KL one-shot", "KL brief lm @ block 2"]
    row = moved["rows"][0]
    assert row["KL one-shot"] == 123.0 and row["KL brief lm @ block 2"] != pool["rows"][0]["KL brief lm"]
    assert (tmp_path / "out" / "selection_fidelity-0.4-offset2.md").exists()
    assert "offset" not in json.dumps(json.loads((tmp_path / "out" / "selection_fidelity-0.4.json").read_text()))


@pytest.mark.parametrize("bad", [["--brief-losses", "lm,mse"], ["--winners", "/no/such/file.json"],
                                 ["--sparsity", "1.5"], ["--offspring", "2"],
                                 ["--brief-offset", "-1"]])
def test_bad_options_are_refused(fidelity, bad, capsys):
    with pytest.raises(SystemExit) as stop:
        fidelity.main(bad)
    assert stop.value.code == 2
    assert bad[0] in capsys.readouterr().err
