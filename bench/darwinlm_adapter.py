"""Run DarwinLM's own code (a checkout of IST-DASLab/DarwinLM, pointed at, never copied) on CPU.

What is replaced, from here, and nothing else:
- device strings: DarwinLM's search moves tensors to the literal "cuda"; inside `on_cpu()` every
  `Tensor.to` / `Module.to` naming a CUDA device goes to the CPU instead.
- data: its `get_data` (FineWeb-Edu / C4 / WikiText through `datasets`) is swapped for evoprune's token
  blocks (`BlockData`), so both methods see the same calibration text.
- logging evaluations: the search's per-generation perplexities on its eval sets and on the whole
  calibration pool only print; they are skipped unless asked for (`log_evals`), as they cost more CPU
  time than a generation's selection.
- distributed init: the database is built by calling its `ZipLMPruner` directly (what `struct_prune.py`'s
  `main` does after `init_process_group("nccl")`), in one process: its `dist_utils` then reports rank 0 of 1
  and skips every collective.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evoprune.errors import UserError

REQUIRED = ("struct_prune.py", "evo_struct_prune_search.py", "src/struct_pruner.py", "src/fast_obc_struct.py")
PRUNABLE = ".*layers.*((q|k|v|o|gate|up|down)_proj)$"  # scripts/ziplm_*.sh
SURVIVORS = [8, 4, 2, 1]  # scripts/struct_prune_search.sh
FITNESS_TOKENS = [1024, 2048, 4096, 8192]


def import_darwinlm(repo: str | os.PathLike):
    """DarwinLM's `src` package and its search module, imported from the checkout `repo`."""
    repo = Path(repo).resolve()
    missing = [p for p in REQUIRED if not (repo / p).is_file()]
    if missing:
        raise UserError(f"{repo} is not a DarwinLM checkout (missing {', '.join(missing)})")
    loaded = sys.modules.get("src")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").parent.parent != repo:
        for name in [n for n in sys.modules if n == "src" or n.startswith("src.")]:
            del sys.modules[name]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    struct_pruner = importlib.import_module("src.struct_pruner")
    search = importlib.import_module("evo_struct_prune_search")
    return struct_pruner, search


def _cpu(value):
    if isinstance(value, str) and value.startswith("cuda"):
        return "cpu"
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("cpu")
    return value


@contextlib.contextmanager
def on_cpu():
    """Inside: tensors and modules sent to a CUDA device stay on the CPU."""
    tensor_to, module_to = torch.Tensor.to, torch.nn.Module.to

    def tensor(self, *args, **kwargs):
        return tensor_to(self, *[_cpu(a) for a in args], **{k: _cpu(v) for k, v in kwargs.items()})

    def module(self, *args, **kwargs):
        return module_to(self, *[_cpu(a) for a in args], **{k: _cpu(v) for k, v in kwargs.items()})

    torch.Tensor.to, torch.nn.Module.to = tensor, module
    try:
        yield
    finally:
        torch.Tensor.to, torch.nn.Module.to = tensor_to, module_to


@dataclass
class BlockData:
    """evoprune's blocks in place of DarwinLM's `get_data`: each split as a list of [1, seq_len] tensors."""

    calibration: torch.Tensor
    train: torch.Tensor | None = None
    eval: torch.Tensor | None = None

    def get_data(self, name, num_tokens, sequence_length, tokenizer, train=True, seed=0):
        if train and seed == 0:
            blocks = self.calibration
        else:
            blocks = self.train if train else self.eval
        if blocks is None or num_tokens <= 0:
            return []
        n = num_tokens // blocks.shape[1]
        if n > len(blocks):
            raise UserError(f"DarwinLM asked for {num_tokens} tokens of {name!r}, evoprune gave {blocks.numel()}")
        return [b[None, :sequence_length].clone() for b in blocks[:n]]


def build_database(repo, model_path: str | os.PathLike, blocks: torch.Tensor, save_dir: str | os.PathLike,
                   cols_attention: list[int], cols_mlp: list[int], rel_damp: float = 0.01,
                   verbose: bool = True) -> float:
    """DarwinLM's ZipLM database of `model_path` on `blocks` (its `struct_prune.py` settings); seconds taken."""
    struct_pruner, _ = import_darwinlm(repo)
    from transformers import AutoModelForCausalLM

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    calibration = [([], {"input_ids": b[None].clone()}) for b in blocks]
    pruner = struct_pruner.ZipLMPruner(
        model, calibration, prunable_modules=PRUNABLE, pre_block_modules=["model.embed_tokens", "model.rotary_emb"],
        block_modules="model.layers", save_dir=str(save_dir), mlp_prune_name="down_proj", attn_prune_name="o_proj",
        rel_damp=rel_damp, device="cpu", verbose=verbose)
    torch.save({"cols_removed_attn": cols_attention, "cols_removed_mlp": cols_mlp}, save_dir / "metadata.pth")
    started = time.time()
    with on_cpu(), torch.no_grad():
        pruner.struct_prune(list(cols_attention), list(cols_mlp))
    seconds = time.time() - started
    (save_dir / "complete").write_text(f"{seconds:.1f}\n")
    return seconds


@dataclass
class SearchRecord:
    """What DarwinLM's search did, seen from outside: one entry per selection stage."""

    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # the whole `main()`, target logits included
    selection_seconds: float = 0.0
    configuration: Path | None = None


def run_search(repo, model_path: str | os.PathLike, database: str | os.PathLike, out_dir: str | os.PathLike,
               data: BlockData, generations: int, target_level: int, offspring: int = 16, seed: int = 0,
               survivors: list[int] = SURVIVORS, fitness_tokens: list[int] = FITNESS_TOKENS,
               log_evals: bool = False) -> SearchRecord:
    """DarwinLM's `evo_struct_prune_search.py` with its script's settings (16 offspring, 8/4/2/1 survivors on
    1,024/2,048/4,096/8,192 tokens, KL fitness) and no training in selection; the final configuration file."""
    _, search = import_darwinlm(repo)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seq_len = data.calibration.shape[1]
    record = SearchRecord()
    selection = search.selection

    def timed_selection(*args, **kwargs):
        started = time.time()
        result = selection(*args, **kwargs)
        spent = time.time() - started
        record.selection_seconds += spent
        record.stages.append({"candidates": len(kwargs["candidates"]), "survivors": kwargs["num_survive"],
                              "tokens": kwargs["num_tokens"], "best_fitness": float(result[1][0]),
                              "seconds": round(spent, 1)})
        return result

    argv = ["evo_struct_prune_search.py", "--model_name_or_path", str(Path(model_path).resolve()),
            "--calibration_data", "evoprune", "--calibration_tokens", str(data.calibration.numel()),
            "--training_tokens", "0", "--calibration_sequence_length", str(seq_len),
            "--eval_datasets", "evoprune-eval", "--eval_tokens", str(0 if data.eval is None else data.eval.numel()),
            "--eval_sequence_length", str(seq_len), "--eval_every", str(max(generations, 1)),
            "--offspring", str(offspring), "--sparse_weights_path", str(Path(database).resolve()),
            "--survivors_per_selection", *map(str, survivors), "--tokens_per_selection", *map(str, fitness_tokens),
            "--training_tokens_per_selection", *["0"] * len(survivors), "--generations", str(generations),
            "--target_level", str(target_level), "--fitness_fn", "kl", "--save_freq", str(generations),
            "--dtype", "float32", "--seed", str(seed), "--attn_implementation", "sdpa", "--use_fast_tokenizer"]
    patches = {"get_data": data.get_data, "selection": timed_selection}
    if not log_evals:
        patches["compute_perplexity"] = lambda model, data, batch_size=1: math.nan
    saved = {name: getattr(search, name) for name in patches}
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    started = time.time()
    try:
        for name, value in patches.items():
            setattr(search, name, value)
        sys.argv = argv
        os.chdir(out_dir)
        with on_cpu():
            search.main()
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        for name, value in saved.items():
            setattr(search, name, value)
    record.seconds = time.time() - started
    name = f"evo-kl-configuration-{float(target_level)}-{Path(model_path).resolve().name}-{generations - 1}step.txt"
    record.configuration = out_dir / name
    if not record.configuration.is_file():
        raise RuntimeError(f"DarwinLM's search wrote no configuration file {record.configuration}")
    return record
