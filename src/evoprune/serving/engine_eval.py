"""`evoprune eval --engine llamacpp`: perplexity, KL, file size and speed of GGUF models in llama.cpp.

The held-out blocks are the token ids evoprune's transformers evaluation scores (`data_blocks`
with the model's HF tokenizer, see `engine_gguf.eval_tokenizer`), so the perplexity of a GGUF
compares directly with `evoprune eval` of the checkpoint it was exported from. A dense `teacher`
GGUF is scored side by side: KL(teacher ‖ model) over the full vocabulary, and prefill / decode
speed measured round-robin in the same run, so the speedups are ratios of one measurement.

The run directory holds `metrics.json`, `config.yaml`, `report.md` and `perplexity.png`, like the
other `eval` runs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..atomic import check_output_dir, staged_dir, write_json, write_text
from ..config import RunConfig, dump_config
from ..data import check_seq_len
from ..errors import UserError
from ..data import data_blocks
from ..report import markdown_table, plot_bars, write_report
from .engine_gguf import check_tokenizer, default_threads, eval_tokenizer, llama_cpp_version, resolve_gguf
from .engine_timing import measure_ggufs
from .llamacpp import LlamaCppModel, repack_setting, require_llama_cpp

log = logging.getLogger(__name__)

COLUMNS = ["model", "file_type", "file_mb", "params", "perplexity", "kl_to_teacher", "prefill_tokens_per_s",
           "decode_tokens_per_s", "prefill_speedup", "decode_speedup", "params_ratio"]


def engine_scores(models: dict, blocks: torch.Tensor, teacher: str | None = None,
                  progress: bool = False) -> dict[str, dict]:
    """Mean next-token NLL, perplexity and (with a teacher) KL of llama.cpp models on `blocks`.

    Every block of length L contributes its L - 1 next-token predictions, as `evaluation.perplexity`.

    Args:
        models: name -> a model with `logits(ids) -> array [len(ids), vocab]` (`LlamaCppModel` with
            `n_ctx >= seq_len`).
        blocks: token ids, shape [n_blocks, seq_len].
        teacher: the name in `models` of the dense model; KL(teacher ‖ model) is then computed
            for every other model over the full vocabulary (not top-k, as the transformers cache).
        progress: show a tqdm bar over blocks.

    Returns:
        name -> {"eval_nll", "perplexity"} (+ "kl_to_teacher" for the teacher and students).
    """
    nll = {name: 0.0 for name in models}
    kl = {name: 0.0 for name in models}
    for block in tqdm(blocks.tolist(), desc="llama.cpp perplexity", unit="block", disable=not progress):
        targets = torch.tensor(block[1:])
        logprobs = {}
        for name, llm in models.items():
            logits = torch.from_numpy(llm.logits(block)[:-1]).float()  # (seq_len - 1, vocab)
            logprobs[name] = torch.log_softmax(logits, dim=-1)
            nll[name] += float(F.nll_loss(logprobs[name], targets, reduction="sum"))
            if teacher is not None and name != teacher:
                t = logprobs[teacher]  # models are scored teacher first
                kl[name] += float((t.exp() * (t - logprobs[name])).sum())
    n_tokens = blocks.shape[0] * (blocks.shape[1] - 1)
    rows = {}
    for name in models:
        mean = nll[name] / n_tokens
        rows[name] = {"eval_nll": mean, "perplexity": math.exp(mean)}
        if teacher is not None:
            rows[name]["kl_to_teacher"] = kl[name] / n_tokens
    return rows


def evaluate_gguf(cfg: RunConfig, model: str, out: str | Path, teacher: str | None = None,
                  tokenizer: str | None = None, force: bool = False, progress: bool = True) -> Path:
    """Evaluate GGUF `model` (and, side by side, the dense GGUF `teacher`) in llama.cpp; write a run directory.

    Args:
        cfg: data.* choose the held-out blocks; eval.prompt_len / new_tokens / warmup / repeats the
            speed workload (batch 1), eval.threads the CPU threads (None: this process's cores),
            eval.latency whether speed is measured at all, eval.repack llama.cpp's weight repacking.
        model: a .gguf file, a folder holding model.gguf, or `smollm2-135m` (the embedded GGUF).
        out: run directory to create.
        teacher: the dense GGUF to compare against (KL, speedups, parameter and size ratios).
        tokenizer: HF folder whose tokenizer makes the token ids (default: see `eval_tokenizer`).

    Returns:
        `out`.

    Raises:
        UserError: bad GGUF files, mismatched vocabularies, blocks longer than a model's context, or
            llama.cpp crashed (`engine_process.EngineCrashed`; every model runs in a child process).
    """
    require_llama_cpp()
    check_output_dir(out, force)
    started = time.time()
    paths = {"teacher": resolve_gguf(teacher)} if teacher else {}
    paths["model"] = resolve_gguf(model)
    threads = cfg.eval.threads or default_threads()
    repack = repack_setting(cfg.eval.repack)
    seq = cfg.data.seq_len
    scorers = {}
    try:
        for name, path in paths.items():
            scorers[name] = LlamaCppModel(path, n_ctx=seq, threads=threads, repack=repack)
        scores, facts, agrees, tok_label, n_tokens = _score(cfg, scorers, model, teacher, tokenizer, progress)
    finally:
        for m in scorers.values():
            m.close()
    speed = {}
    if cfg.eval.latency:
        ev = cfg.eval
        speed = measure_ggufs(paths, ev.prompt_len, ev.new_tokens, ev.warmup, ev.repeats, threads, repack,
                              seed=cfg.seed, progress=progress)
    rows = engine_rows(facts, scores, speed)
    engine = {"name": "llama.cpp", "llama_cpp_python": llama_cpp_version(), "threads": threads, "repack": repack,
              "system": require_llama_cpp().llama_print_system_info().decode(errors="replace").strip(),
              "tokenizer": tok_label, "tokenizer_agrees": agrees}
    metrics = {**rows, "engine": engine, "eval_tokens": n_tokens,
               "latency": {name: s.to_dict() for name, s in speed.items()},
               "wall_time_s": round(time.time() - started, 1)}
    with staged_dir(out, force=force) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_text(tmp / "config.yaml", dump_config(cfg))
        _report(tmp, cfg, model, rows, metrics)
    log.info("wrote %s", out)
    return Path(out)


def _score(cfg: RunConfig, scorers: dict[str, LlamaCppModel], model: str, teacher: str | None,
           tokenizer: str | None, progress: bool) -> tuple:
    """Check the loaded models against each other and the tokenizer, then score them on the held-out blocks.

    Returns:
        (scores, facts, tokenizer agreement, tokenizer label, tokens scored per model).
    """
    seq = cfg.data.seq_len
    facts = {name: m.facts() for name, m in scorers.items()}
    for name, fact in facts.items():
        check_seq_len(seq, fact.context_length)
    if teacher and facts["teacher"].vocab_size != facts["model"].vocab_size:
        raise UserError(f"teacher {teacher} and model {model} have different vocabularies "
                        f"({facts['teacher'].vocab_size} vs {facts['model'].vocab_size}); KL needs the same tokenizer")
    tok, tok_label = eval_tokenizer(scorers["model"].path, tokenizer)
    agrees = {name: check_tokenizer(m, tok, tok_label, name) for name, m in scorers.items()}
    blocks = data_blocks(cfg, tok, "eval", cfg.data.eval_blocks)
    if int(blocks.max()) >= facts["model"].vocab_size:
        raise UserError(f"token id {int(blocks.max())} is outside the GGUF vocabulary of {facts['model'].vocab_size}; "
                        "pass --tokenizer with the HF folder the GGUF was exported from")
    scores = engine_scores(scorers, blocks, "teacher" if teacher else None, progress)
    return scores, facts, agrees, tok_label, int(blocks.numel())


def engine_rows(facts: dict, scores: dict[str, dict], speed: dict) -> dict[str, dict]:
    """One row per model: file, size and parameters, scores, speed and ratios to the first model."""
    rows = {}
    for name, fact in facts.items():
        rows[name] = {"model": name, "file": fact.path, "file_type": fact.file_type,
                      "file_mb": fact.file_bytes / 2**20, "params": fact.params, "layers": fact.layers,
                      **scores[name]}
        if name in speed:
            rows[name].update(prefill_tokens_per_s=speed[name].prefill_tokens_per_s,
                              decode_tokens_per_s=speed[name].decode_tokens_per_s)
    first = next(iter(rows.values()))
    for row in rows.values():
        row["params_ratio"] = row["params"] / first["params"]
        row["size_ratio"] = row["file_mb"] / first["file_mb"]
        if "decode_tokens_per_s" in row:
            row["prefill_speedup"] = row["prefill_tokens_per_s"] / first["prefill_tokens_per_s"]
            row["decode_speedup"] = row["decode_tokens_per_s"] / first["decode_tokens_per_s"]
    return rows


def _report(folder: Path, cfg: RunConfig, model: str, rows: dict[str, dict], metrics: dict) -> None:
    plot_bars({k: r["perplexity"] for k, r in rows.items()}, "held-out perplexity (llama.cpp)",
              "perplexity (log scale)", folder / "perplexity.png", log=True)
    first = next(iter(rows.values()))
    table = markdown_table(list(rows.values()), [c for c in COLUMNS if c in first])
    files = markdown_table([{"model": r["model"], "file": r["file"], "layers": r["layers"]} for r in rows.values()])
    engine, ev = metrics["engine"], cfg.eval
    agreement = ", ".join(f"{k}: {'same' if v else 'DIFFERENT'}" for k, v in engine["tokenizer_agrees"].items())
    sections = [("Result", table + "\n![perplexity](perplexity.png)\n"), ("Files", files),
                ("Engine", f"llama.cpp (llama-cpp-python {engine['llama_cpp_python']}), CPU, {engine['threads']} "
                           f"threads, weight repacking {'on' if engine['repack'] else 'off'} (eval.repack, "
                           f"docs/serving.md). {engine['system']}\n"),
                ("Data", f"{cfg.data.source}, held-out split, {metrics['eval_tokens']:,} tokens in blocks of "
                         f"{cfg.data.seq_len}, tokenized by {engine['tokenizer']} (the GGUF's own tokenizer splits "
                         f"a probe text the same way: {agreement}). KL is over the full vocabulary. Speed: batch 1, "
                         f"prompt {ev.prompt_len}, {ev.new_tokens} greedy decode steps, median of {ev.repeats} "
                         f"repeats after {ev.warmup} warm-up rounds, models interleaved.")]
    sections.append(("Reproduce", "```\nevoprune eval --engine llamacpp --config config.yaml --model <model.gguf> "
                                  "[--teacher <dense.gguf>] --out <dir>\n```"))
    write_report(folder / "report.md", f"evoprune eval (llama.cpp): {model}", sections)
