"""Prefill and decode speed of GGUF models in llama.cpp, measured side by side in an engine child process.

`time_ggufs` (whole models at batch 1, `evoprune eval --engine llamacpp`) and `sample_gguf_calls`
(single prefill or decode calls, the llama.cpp latency table) run inside an `EngineProcess`; their
parents call them through `measure_ggufs` and `darwinlm.llamacpp_latency`.

One repeat = a prefill of `prompt_len` random token ids into an empty KV cache, then `new_tokens`
greedy single-token decode steps (the argmax of the last logits is fed back), as
`evaluation.latency` does for transformers. Several models are measured round-robin, repeat by
repeat with the order rotated, so that a slow phase of a shared machine hits all of them alike,
and the medians of their repeats are compared within the same run.
"""

from __future__ import annotations

import ctypes
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import UserError
from .engine_process import run_isolated
from .llamacpp import open_llama, repack_setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineLatency:
    """Speed of one model in llama.cpp.

    Attributes:
        prefill_tokens_per_s: median over repeats of prompt_len / prefill seconds.
        decode_tokens_per_s: median over repeats of new_tokens / decode seconds.
        prefill_runs, decode_runs: the per-repeat tokens/s, in measurement order.
    """

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prefill_runs: tuple[float, ...]
    decode_runs: tuple[float, ...]
    prompt_len: int
    new_tokens: int
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def last_logits(llm) -> np.ndarray:
    """The logits llama.cpp kept for the last token of the last `eval`, shape (vocab,)."""
    pointer = llm._ctx.get_logits()
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(llm.n_vocab(),))


def prefill(llm, ids: list[int], start: int = 0) -> None:
    """Run `ids` through the model at positions `start`, `start + 1`, ..., dropping cached positions from `start` on."""
    llm.n_tokens = start
    llm.eval(ids)


class _Run:
    """One model with its prompt, able to run one prefill + decode repeat."""

    def __init__(self, llm, prompt: list[int], new_tokens: int):
        if llm.n_ctx() < len(prompt) + new_tokens:
            raise UserError(f"the llama.cpp context holds {llm.n_ctx()} positions, fewer than prompt_len + "
                            f"new_tokens = {len(prompt) + new_tokens}")
        self.llm, self.prompt, self.new_tokens = llm, prompt, new_tokens
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []

    def run(self, record: bool) -> None:
        started = time.perf_counter()
        prefill(self.llm, self.prompt)
        next_id = int(np.argmax(last_logits(self.llm)))
        prefilled = time.perf_counter()
        for _ in range(self.new_tokens):
            self.llm.eval([next_id])
            next_id = int(np.argmax(last_logits(self.llm)))
        decoded = time.perf_counter()
        if record:
            self.prefill_s.append(prefilled - started)
            self.decode_s.append(decoded - prefilled)


def compare_engine_latency(models: dict, prompt_len: int = 128, new_tokens: int = 32, warmup: int = 2,
                           repeats: int = 5, threads: int = 1, seed: int = 0,
                           progress: bool = False) -> dict[str, EngineLatency]:
    """Measure several llama.cpp models in one run, interleaved repeat by repeat.

    Args:
        models: name -> `llama_cpp.Llama` opened with `logits_all=False` and room for
            prompt_len + new_tokens positions.
        prompt_len: prefill length in tokens.
        new_tokens: greedy decode steps after the prefill.
        warmup: untimed rounds before measuring.
        repeats: timed rounds; medians are over these.
        threads: the threads the models were opened with (recorded in the result).
        seed: seed of the random prompt (the same prompt for models of the same vocabulary size).
        progress: show a tqdm bar over rounds.

    Returns:
        name -> EngineLatency, in the order of `models`.
    """
    for name, value, minimum in (("prompt_len", prompt_len, 1), ("new_tokens", new_tokens, 1),
                                 ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < minimum:
            raise UserError(f"latency {name} must be an integer >= {minimum}, got {value!r}")
    runs = {}
    for name, llm in models.items():
        prompt = np.random.default_rng(seed).integers(0, llm.n_vocab(), prompt_len).tolist()
        runs[name] = _Run(llm, prompt, new_tokens)
    order = list(runs.values())
    for round_index in tqdm(range(warmup + repeats), desc="llama.cpp latency", unit="round", disable=not progress):
        shift = round_index % len(order)
        for run in order[shift:] + order[:shift]:
            run.run(record=round_index >= warmup)
    results = {}
    for name, run in runs.items():
        prefill_runs = tuple(prompt_len / s for s in run.prefill_s)
        decode_runs = tuple(new_tokens / s for s in run.decode_s)
        results[name] = EngineLatency(statistics.median(prefill_runs), statistics.median(decode_runs),
                                      prefill_runs, decode_runs, prompt_len, new_tokens, threads)
        log.info("%s: prefill %.1f tok/s, decode %.1f tok/s (llama.cpp, %d threads)", name,
                 results[name].prefill_tokens_per_s, results[name].decode_tokens_per_s, threads)
    return results


def measure_ggufs(paths: dict[str, Path], prompt_len: int = 128, new_tokens: int = 32, warmup: int = 2,
                  repeats: int = 5, threads: int = 1, repack: str | bool | dict = "auto", seed: int = 0,
                  progress: bool = False) -> dict[str, EngineLatency]:
    """`compare_engine_latency` of GGUF files, loaded and timed in an engine child process.

    Args:
        paths: name -> .gguf file.
        repack: weight repacking for all (`auto` | `on` | `off`), or name -> on / off per file, so that
            one file can be timed both ways side by side (under two names).

    Raises:
        EngineCrashed: llama.cpp died in native code.
    """
    per_file = repack if isinstance(repack, dict) else {name: repack for name in paths}
    per_file = {name: repack_setting(per_file[name]) for name in paths}
    label = ", ".join(sorted({str(p) for p in paths.values()}))
    return run_isolated(time_ggufs, paths, prompt_len, new_tokens, warmup, repeats, threads, per_file, seed,
                        progress, label=label, repack=any(per_file.values()))


def time_ggufs(paths: dict[str, Path], prompt_len: int, new_tokens: int, warmup: int, repeats: int, threads: int,
               repack: dict[str, bool], seed: int, progress: bool) -> dict[str, EngineLatency]:
    """In the child: open every file with room for the workload, time them interleaved, close them."""
    models = {name: open_llama(path, n_ctx=prompt_len + new_tokens, threads=threads, n_batch=prompt_len,
                               repack=repack[name]) for name, path in paths.items()}
    try:
        return compare_engine_latency(models, prompt_len, new_tokens, warmup, repeats, threads, seed, progress)
    finally:
        for llm in models.values():
            llm.close()


class CallTimer:
    """One GGUF file in llama.cpp with a fixed random input, able to time one prefill or one decode call.

    `prefill` runs `tokens` tokens at batch 1 into an empty cache; `decode` runs one token against a
    cache of `tokens` positions.
    """

    def __init__(self, path: Path, mode: str, tokens: int, threads: int, repack: bool):
        self.mode, self.tokens = mode, tokens
        self.llm = open_llama(path, n_ctx=tokens + 1, threads=threads, n_batch=tokens, repack=repack)
        self.ids = np.random.default_rng(0).integers(0, self.llm.n_vocab(), tokens + 1).tolist()
        if self.mode == "decode":
            prefill(self.llm, self.ids[:-1])  # the context every decode call sees
        self.calls = 1

    def _once(self) -> None:
        if self.mode == "prefill":
            prefill(self.llm, self.ids[:-1])
        else:
            prefill(self.llm, self.ids[-1:], start=self.tokens)  # drops the token the last call added

    def calibrate(self, sample_seconds: float) -> None:
        """Choose how many calls one sample makes, so that it lasts about `sample_seconds`."""
        self.calls = 1
        self.calls = max(1, math.ceil(sample_seconds / max(self(), 1e-7)))

    def __call__(self) -> float:
        """Seconds per call, over one sample of `calls` calls."""
        started = time.perf_counter()
        for _ in range(self.calls):
            self._once()
        return (time.perf_counter() - started) / self.calls


def sample_gguf_calls(files: dict, mode: str, tokens: int, warmup: int, repeats: int, sample_seconds: float,
                      threads: int, repack: bool, progress: bool) -> dict:
    """In the child: seconds per call of every file, `repeats` samples each after `warmup` rounds, round-robin.

    Args:
        files: key -> .gguf file.

    Returns:
        key -> the list of `repeats` samples.
    """
    timers = {}
    for key, path in tqdm(files.items(), desc="latency table: loading", disable=not progress):
        timers[key] = CallTimer(path, mode, tokens, threads, repack)
        timers[key].calibrate(sample_seconds)
    samples: dict = {k: [] for k in timers}
    try:
        for r in tqdm(range(warmup + repeats), desc="latency table: rounds", disable=not progress):
            for key, timer in timers.items():
                elapsed = timer()
                if r >= warmup:
                    samples[key].append(elapsed)
    finally:
        for timer in timers.values():
            timer.llm.close()
    return samples
