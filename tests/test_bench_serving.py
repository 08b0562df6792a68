"""bench/serving.py's table code on made-up metrics: rows, speedups, the two goals, the page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def serving():
    """bench/serving.py, loaded under another name: `serving` is also the tests/serving package."""
    spec = importlib.util.spec_from_file_location("bench_serving", BENCH / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(dense_ppl, pruned_ppl, dense_decode, pruned_decode, dense_mb=None, pruned_mb=None):
    rows = {"teacher": {"params": 100, "perplexity": dense_ppl, "prefill_tokens_per_s": 400.0,
                        "decode_tokens_per_s": dense_decode, "prefill_speedup": 1.0, "decode_speedup": 1.0},
            "model": {"params": 60, "perplexity": pruned_ppl, "prefill_tokens_per_s": 600.0,
                      "decode_tokens_per_s": pruned_decode, "prefill_speedup": 1.5,
                      "decode_speedup": pruned_decode / dense_decode}}
    if dense_mb is not None:
        rows["teacher"]["file_mb"], rows["model"]["file_mb"] = dense_mb, pruned_mb
    return rows


def test_rows_have_every_engine_format_and_model_with_ratios(serving):
    tf = _metrics(30.0, 100.0, 10.0, 13.0)
    gguf = {"f16": _metrics(30.1, 100.2, 50.0, 80.0, 260.0, 160.0),
            "q4_k_m": _metrics(32.0, 110.0, 90.0, 120.0, 90.0, 60.0)}
    rows = serving.serving_rows(tf, gguf, {"dense": 2**30, "pruned": 2**29})
    assert [(r["engine"], r["format"], r["model"]) for r in rows] == [
        ("transformers", "fp32", "dense"), ("transformers", "fp32", "pruned"), ("llama.cpp", "f16", "dense"),
        ("llama.cpp", "f16", "pruned"), ("llama.cpp", "q4_k_m", "dense"), ("llama.cpp", "q4_k_m", "pruned")]
    assert rows[0]["file_mb"] == 1024 and rows[1]["file_mb"] == 512 and rows[3]["file_mb"] == 160.0
    assert rows[1]["params_ratio"] == pytest.approx(0.6) and rows[1]["ideal_speedup"] == pytest.approx(100 / 60)
    assert rows[2]["ideal_speedup"] == 1.0 and rows[3]["decode_speedup"] == pytest.approx(1.6)


def test_goals_are_checked_per_format_and_model(serving):
    tf = _metrics(30.0, 100.0, 10.0, 13.0)
    gguf = {"f16": _metrics(30.1, 100.2, 50.0, 80.0, 260.0, 160.0),  # 1.6 >= 0.9 x 1.667 = 1.5: met
            "q8_0": _metrics(30.5, 101.0, 70.0, 84.0, 140.0, 90.0)}  # 1.2 < 1.5: not met
    checks = serving.goal_checks(serving.serving_rows(tf, gguf, {"dense": 1, "pruned": 1}))
    met = {c["goal"]: c["met"] for c in checks}
    assert met["llama.cpp f16: decode speedup >= 0.9 x ideal"] is True
    assert met["llama.cpp q8_0: decode speedup >= 0.9 x ideal"] is False
    assert met["dense: llama.cpp f16 perplexity within 0.5% of transformers"] is True  # 0.33%
    assert met["pruned: llama.cpp f16 perplexity within 0.5% of transformers"] is True  # 0.2%
    page = serving.render(serving.serving_rows(tf, gguf, {"dense": 1, "pruned": 1}), checks, "setup", "cmd",
                          {"pruned q8_0": [3, 5], "dense q8_0": []})
    assert "| llama.cpp | q8_0 | pruned |" in page and "**no**" in page and "pruned q8_0: layers [3, 5]" in page
    assert "dense q8_0" not in page


def test_perplexity_goal_fails_beyond_half_a_percent(serving):
    tf = _metrics(30.0, 100.0, 10.0, 13.0)
    rows = serving.serving_rows(tf, {"f16": _metrics(30.0, 101.0, 50.0, 80.0, 1.0, 1.0)}, {"dense": 1, "pruned": 1})
    pruned = next(c for c in serving.goal_checks(rows) if c["goal"].startswith("pruned"))
    assert pruned["measured"] == pytest.approx(0.01) and pruned["met"] is False


def test_repacking_rows_give_off_over_on_and_name_a_crash(serving):
    def speed(prefill, decode):
        return {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode}

    speeds = {"q8_0": {"dense repack on": speed(200.0, 70.0), "dense repack off": speed(100.0, 63.0),
                       "pruned repack on": speed(400.0, 100.0), "pruned repack off": speed(300.0, 100.0)},
              "q4_k_m": {"crashed": "llama.cpp died of SIGSEGV in `time_ggufs` on a.gguf"}}
    rows = serving.repack_rows(speeds)
    assert [(r["format"], r["model"]) for r in rows] == [("q8_0", "dense"), ("q8_0", "pruned"), ("q4_k_m", "both")]
    assert rows[0]["decode_off_over_on"] == pytest.approx(0.9) and rows[0]["prefill_off_over_on"] == 0.5
    assert rows[1]["decode_off_over_on"] == 1.0
    page = serving.render([], [], "setup", "cmd", None, rows)
    assert "## Weight repacking" in page and "| q8_0 | dense | 70 | 63 | 0.9 |" in page
    assert "q4_k_m: repacking on crashed: llama.cpp died of SIGSEGV" in page
