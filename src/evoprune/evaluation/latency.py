"""Prefill and decode speed, weight and KV-cache memory of causal LMs, measured side by side.

One repeat = one prefill forward of random prompt ids [batch, prompt_len] with `use_cache=True`,
then `new_tokens` greedy single-token decode steps that feed back the returned `past_key_values`.
Several models are measured round-robin, repeat by repeat (with the order rotated every repeat),
so slow phases of a shared machine hit all of them alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch.hf.modeling_evoprune import CACHE_ARG
from ..device import synchronize
from ..errors import UserError
from .blocks import eval_mode, model_device, model_dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyResult:
    """Speed and memory of one model.

    Attributes:
        prefill_tokens_per_s: median over repeats of batch_size * prompt_len / prefill seconds.
        decode_tokens_per_s: median over repeats of batch_size * new_tokens / decode seconds.
        prefill_runs, decode_runs: the per-repeat tokens/s, in measurement order.
        prefill_iqr, decode_iqr: (25th, 75th) percentile of the per-repeat tokens/s.
        batch_size, prompt_len, new_tokens: the workload.
        device, dtype: where and in which parameter dtype the model ran.
        weights_bytes: bytes of all parameters and buffers, shared (tied) tensors counted once.
        kv_cache_bytes: bytes of the tensors in the cache after prefill + decode
            (prompt_len + new_tokens positions).
        cuda_peak_bytes: on CUDA, the weights plus the most memory allocated above what was
            resident when a repeat began (`torch.cuda.max_memory_allocated` after
            `reset_peak_memory_stats`): activations, logits and KV cache at their peak. None on CPU.
    """

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prefill_runs: tuple[float, ...]
    decode_runs: tuple[float, ...]
    prefill_iqr: tuple[float, float]
    decode_iqr: tuple[float, float]
    batch_size: int
    prompt_len: int
    new_tokens: int
    device: str
    dtype: str
    weights_bytes: int
    kv_cache_bytes: int
    cuda_peak_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def weights_nbytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of `model`; tensors sharing storage are counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        key = (tensor.data_ptr(), tensor.nbytes) if tensor.data_ptr() else (id(tensor), tensor.nbytes)
        if key not in seen:
            seen.add(key)
            total += tensor.nbytes
    return total


def cache_nbytes(cache: Any) -> int:
    """Bytes of every distinct tensor reachable from a `past_key_values` object (Cache or nested tuples)."""
    seen_objects: set[int] = set()
    seen_tensors: set[tuple[int, int]] = set()

    def walk(obj: Any, depth: int) -> int:
        if isinstance(obj, torch.Tensor):
            key = (obj.data_ptr(), obj.nbytes) if obj.data_ptr() else (id(obj), obj.nbytes)
            if key in seen_tensors:
                return 0
            seen_tensors.add(key)
            return obj.nbytes
        if depth > 8 or id(obj) in seen_objects or isinstance(obj, (nn.Module, str, bytes, int, float, bool)):
            return 0
        seen_objects.add(id(obj))
        if isinstance(obj, dict):
            return sum(walk(v, depth + 1) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v, depth + 1) for v in obj)
        if hasattr(obj, "__dict__"):
            return sum(walk(v, depth + 1) for v in vars(obj).values())
        return 0

    return walk(cache, 0)


def _check_workload(models: dict[str, nn.Module], batch_size: int, prompt_len: int, new_tokens: int, warmup: int,
                    repeats: int, prompt_setting: str = "eval.prompt_len") -> None:
    if not models:
        raise UserError("compare_latency needs at least one model")
    for name, value, minimum in (("batch_size", batch_size, 1), ("prompt_len", prompt_len, 1),
                                 ("new_tokens", new_tokens, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < minimum:
            raise UserError(f"latency {name} must be an integer >= {minimum}, got {value!r}")
    for name, model in models.items():
        max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(max_positions, int) and prompt_len + new_tokens > max_positions:
            raise UserError(f"latency prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the "
                            f"{max_positions} positions of model {name!r}; lower {prompt_setting} or eval.new_tokens")


def _vocab_size(model: nn.Module, name: str) -> int:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(size, int):
        try:
            size = model.get_input_embeddings().num_embeddings
        except (AttributeError, NotImplementedError):
            raise UserError(f"cannot tell the vocabulary size of model {name!r}; pass vocab_size=") from None
    return size


class _Workload:
    """A model with its fixed random prompt, able to run one timed prefill + decode repeat."""

    def __init__(self, model: nn.Module, prompt: torch.Tensor, new_tokens: int):
        self.model = model
        self.device = model_device(model)
        self.prompt = prompt.to(self.device)
        self.new_tokens = new_tokens
        accepts = inspect.signature(model.forward).parameters
        self.prefill_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []
        self.kv_cache_bytes = 0
        self.cuda_working_bytes: int | None = None

    def run(self, record: bool) -> None:
        """One prefill of the prompt, then `new_tokens` greedy decode steps through the KV cache."""
        synchronize(self.device)
        if self.device.type == "cuda":
            resident = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        out = self.model(input_ids=self.prompt, use_cache=True, **self.prefill_kwargs)
        next_ids = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        synchronize(self.device)
        prefilled = time.perf_counter()
        past = getattr(out, CACHE_ARG)
        for _ in range(self.new_tokens):
            out = self.model(input_ids=next_ids, **{CACHE_ARG: past}, use_cache=True)
            past = getattr(out, CACHE_ARG)
            next_ids = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        synchronize(self.device)
        decoded = time.perf_counter()
        if record:
            self.prefill_s.append(prefilled - started)
            self.decode_s.append(decoded - prefilled)
            self.kv_cache_bytes = cache_nbytes(past)
            if self.device.type == "cuda":
                working = torch.cuda.max_memory_allocated(self.device) - resident
                self.cuda_working_bytes = max(working, self.cuda_working_bytes or 0)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def _result(work: _Workload, batch_size: int, prompt_len: int, new_tokens: int) -> LatencyResult:
    prefill = [batch_size * prompt_len / s for s in work.prefill_s]
    decode = [batch_size * new_tokens / s for s in work.decode_s]
    weights = weights_nbytes(work.model)
    return LatencyResult(
        prefill_tokens_per_s=statistics.median(prefill), decode_tokens_per_s=statistics.median(decode),
        prefill_runs=tuple(prefill), decode_runs=tuple(decode),
        prefill_iqr=_quartiles(prefill), decode_iqr=_quartiles(decode),
        batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
        device=str(work.device), dtype=str(model_dtype(work.model)).removeprefix("torch."),
        weights_bytes=weights, kv_cache_bytes=work.kv_cache_bytes,
        cuda_peak_bytes=None if work.cuda_working_bytes is None else weights + work.cuda_working_bytes)


def compare_latency(models: dict[str, nn.Module], batch_size: int = 1, prompt_len: int = 128, new_tokens: int = 32,
                    warmup: int = 2, repeats: int = 5, vocab_size: int | None = None, seed: int = 0,
                    progress: bool = False) -> dict[str, LatencyResult]:
    """Measure several models in the same run, interleaved repeat by repeat.

    Every round runs each model once (warm-up rounds first, untimed), rotating which model goes
    first, so that machine noise affects all models alike. Models sharing a vocabulary get the
    same random prompt.

    Args:
        models: name -> causal LM (any module whose forward takes input_ids / past_key_values / use_cache).
        batch_size: prompts per forward.
        prompt_len: prefill length in tokens.
        new_tokens: greedy decode steps after the prefill.
        warmup: untimed rounds before measuring.
        repeats: timed rounds; medians and quartiles are over these.
        vocab_size: range of the random prompt ids; default each model's vocabulary.
        seed: seed of the random prompt.
        progress: show a tqdm bar over rounds.

    Returns:
        name -> LatencyResult, in the order of `models`.
    """
    _check_workload(models, batch_size, prompt_len, new_tokens, warmup, repeats)
    workloads = {}
    for name, model in models.items():
        generator = torch.Generator().manual_seed(seed)
        high = vocab_size or _vocab_size(model, name)
        prompt = torch.randint(0, high, (batch_size, prompt_len), generator=generator)
        workloads[name] = _Workload(model, prompt, new_tokens)
    order = list(workloads.values())
    with contextlib.ExitStack() as stack, torch.inference_mode():
        for model in models.values():
            stack.enter_context(eval_mode(model))
        for round_index in tqdm(range(warmup + repeats), desc="latency", unit="round", disable=not progress):
            shift = round_index % len(order)
            for work in order[shift:] + order[:shift]:
                work.run(record=round_index >= warmup)
    results = {name: _result(work, batch_size, prompt_len, new_tokens) for name, work in workloads.items()}
    for name, res in results.items():
        log.info("%s: prefill %.1f tok/s, decode %.1f tok/s, weights %.1f MB, KV cache %.2f MB", name,
                 res.prefill_tokens_per_s, res.decode_tokens_per_s, res.weights_bytes / 1e6, res.kv_cache_bytes / 1e6)
    return results


def measure_latency(model: nn.Module, batch_size: int = 1, prompt_len: int = 128, new_tokens: int = 32,
                    warmup: int = 2, repeats: int = 5, vocab_size: int | None = None, seed: int = 0,
                    progress: bool = False) -> LatencyResult:
    """Prefill / decode speed and memory of one model; see `compare_latency` for the arguments."""
    return compare_latency({"model": model}, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
                           warmup=warmup, repeats=repeats, vocab_size=vocab_size, seed=seed,
                           progress=progress)["model"]
