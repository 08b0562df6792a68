"""Run configuration: YAML files that map 1:1 to dataclasses, validated up front.

Every field has a default and a comment. `load_config(path, overrides)` reads a YAML file (or
starts from defaults), applies dotted `key=value` overrides such as `data.seq_len=256`, and
validates everything at once, reporting every problem in one ConfigError.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


log = logging.getLogger(__name__)

DEVICES = "cpu, cuda, cuda:N or mps"  # model.device (--device), the same for every command
DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")

class ConfigError(UserError):
    """One or more configuration problems, all listed in the message."""


@dataclass
class ModelConfig:
    source: str = "smollm2-135m"  # embedded default, a local HF folder, or a hub id (owner/name: downloaded once
    # into the HF cache; HF_HUB_OFFLINE=1 looks in the cache only; HF_TOKEN, HF_HOME, HF_ENDPOINT are honoured)
    revision: str | None = None  # hub id: branch, tag or commit to fetch; null = main
    dtype: str = "float32"  # float32 | bfloat16 | float16: the dtype weights are loaded (and kept) in
    compute_dtype: str = "auto"  # dtype layers run in, converted a module at a time; auto: float32 on CPU, else dtype
    # prune, slice, database, eval (model and teacher), train (the teacher): keep bf16/fp16 weights memory-mapped as
    # stored and run them in dtype one module at a time (the same numbers as a copy in dtype): true | false | auto =
    # when a copy would not fit --max-memory, or without a budget would take more than half of MemAvailable (a
    # cached train teacher: whenever possible) (memory_plan.py)
    bounded: bool | str = "auto"
    device: str = "cpu"  # cpu | cuda (under torchrun: cuda:LOCAL_RANK, docs/gpu.md) | cuda:N | mps
    allow_pickle: bool = False  # accept *.bin checkpoints (pickle can run code)
    trust_remote_code: bool = False  # accept folders that ship their own modeling code


@dataclass
class DataConfig:
    # embedded[:boolq|sciq|lambada], a .txt/.jsonl/.parquet file, a save_to_disk folder, or a hub dataset
    # (owner/name or hf:name, read with datasets.load_dataset; HF_HUB_OFFLINE=1: only what an earlier run cached)
    source: str = "embedded"
    text_field: str = "text"  # column holding the text in jsonl / parquet / datasets / hub sources
    hub_config: str | None = None  # hub dataset: its configuration (subset), e.g. wikitext-2-raw-v1 or sample-10BT
    hub_split: str = "train"  # hub dataset: the split read (then cut into evoprune's calibration / train / eval)
    streaming: bool = False  # hub dataset: stream rows up to data.max_tokens instead of downloading it whole
    max_tokens: int | None = None  # hub dataset: read rows until this many tokens (whole rows); null = all rows
    revision: str | None = None  # hub dataset: branch, tag or commit; null = main
    seq_len: int = 512  # tokens per packed block
    calibration_blocks: int = 32  # blocks for importance statistics (and the teacher cache)
    eval_blocks: int = 32  # held-out blocks for perplexity and KL
    batch_size: int = 4  # blocks per forward pass


@dataclass
class PruneConfig:
    method: str = "uniform"  # uniform | depth
    sparsity: float | list[float] | None = 0.5  # fraction of transformer-block parameters removed, in (0, 1);
    # darwin and search: a list, e.g. [0.25, 0.4, 0.5, 0.6], makes one model per size from one database (a family)
    target_params: int | list[int] | None = None  # or: total parameters to keep (embeddings included); a list as above
    # keep MLP widths at multiples of this (8, 64, 128 run faster on GPUs): prune's widths, the levels of
    # darwin's database, and nas's search space (its hidden size too)
    multiple: int = 1

    def sizes(self) -> list["PruneConfig"]:
        """One PruneConfig per size asked for, in the order given, repeats merged."""
        name = "sparsity" if self.sparsity is not None else "target_params"
        values = getattr(self, name)
        if not isinstance(values, list):
            return [self]
        return [dataclasses.replace(self, **{name: v}) for v in dict.fromkeys(values)]

    def one_size(self, command: str) -> "PruneConfig":
        """The one size of a command that makes one model; a list is refused."""
        sizes = self.sizes()
        if len(sizes) > 1:
            raise UserError(f"{command} makes one model: give one --sparsity / --target-params (darwin and search make "
                            "one model per size from a list)")
        return sizes[0]


@dataclass
class EvalConfig:
    # `evoprune eval`: the dense model to compare against (KL, speedups); null = none. The pruning commands
    # always compare with the model they prune.
    teacher: str | None = None
    # `evoprune eval`: lm-eval tasks, offline: a preset (quick | darwinlm | all) or a comma list (arc_easy,
    # arc_challenge, piqa, hellaswag, winogrande, boolq, sciq, openbookqa, mmlu, lambada_openai); null = none
    tasks: str | None = None
    limit: int | None = None  # at most this many examples per task; null = the preset's (quick: 100) or all
    num_fewshot: int | None = None  # few-shot examples for every task; null = the preset's
    # `evoprune eval`: WikiText-2 / C4 perplexity as the pruning papers compute it (evaluation/paper_perplexity.py):
    # a comma list of wikitext2, c4; null = none. The data comes from the hub (cached once) or the sources below.
    paper_ppl: str | None = None
    paper_seq_len: int = 2048  # window length of paper_ppl (the papers' 2048), or the model's maximum if smaller
    wikitext2_source: str | None = None  # a local copy of WikiText-2 raw's test split (parquet, json, txt, folder)
    c4_source: str | None = None  # a local copy of C4's en/c4-validation.00000-of-00008.json.gz
    top_k: int = 1024  # teacher log-probs kept per position on disk (top-64 under-reports KL by 15-23%, 1024 by ~3%)
    latency: bool = True  # measure prefill / decode speed of dense and pruned side by side
    prompt_len: int = 128  # prefill length for latency
    new_tokens: int = 32  # decode steps for latency
    repeats: int = 5  # timed repeats (median reported), after warm-up
    warmup: int = 2  # untimed latency rounds before the repeats
    batch_size: int = 1  # batch size for latency
    # Latency sweep (`evoprune eval`), e.g. [1, 4, 16] x [128, 512]: every pair is measured and reported.
    # null in both = no sweep; null in one = that list is just eval.batch_size / eval.prompt_len.
    latency_batch_sizes: list[int] | None = None
    latency_prompt_lens: list[int] | None = None
    # Perplexity on text of other genres that the run never calibrates, searches or trains on, beside the
    # held-out figure: dev genres (news, how-to, math; settings are chosen on them) and test genres (Jane
    # Austen, the Debian Policy Manual; nothing is chosen on them); see data/unseen_sources.py.
    unseen: bool = True
    # held-out blocks of the reference rows (a darwin run's uniform genotype of the same database): the first of
    # data.eval_blocks. Its perplexity is several times the searched model's, so a quarter of the text separates
    # them; each row's perplexity_ci95 gives the interval and heldout_blocks the count. null = all of them.
    reference_blocks: int | None = 8
    unseen_blocks: int = 8  # blocks of data.seq_len tokens per unseen genre (5 genres x 8 x 512 = 20k tokens a model)
    # Perplexity (held-out and unseen text) layer by layer: every batch through one decoder layer before the
    # next, so weights larger than RAM are read once, not once per batch; the same numbers to float rounding.
    # true | false | auto = when the model's weights exceed half of MemAvailable (evaluate/streamed_choice.py).
    streamed: bool | str = "auto"
    engine: str = "transformers"  # `evoprune eval` runs the model in: transformers (HF folder) | llamacpp (GGUF file)
    threads: int | None = None  # llama.cpp CPU threads (eval and the llamacpp latency table); None = this process's cores
    # llama.cpp weight repacking (its extra buffer types), for eval and the llamacpp latency table: auto = on, except
    # on CPUs with AMX, where llama.cpp's AMX backend crashes on quantized GGUFs (docs/serving.md) | on | off
    repack: str = "auto"
    # eval.engine llamacpp: HF folder whose tokenizer makes the eval token ids; null = the tokenizer files
    # beside the GGUF, else the GGUF's own
    tokenizer: str | None = None

    def sweep_grid(self) -> tuple[list[int], list[int]] | None:
        """(batch sizes, prompt lengths) of the latency sweep, or None when no sweep is configured."""
        if self.latency_batch_sizes is None and self.latency_prompt_lens is None:
            return None
        return (self.latency_batch_sizes if self.latency_batch_sizes is not None else [self.batch_size],
                self.latency_prompt_lens if self.latency_prompt_lens is not None else [self.prompt_len])


@dataclass
class DatabaseConfig:
    num_levels: int = 11  # compression levels per module, removed to full (DarwinLM: 11)
    spacing: str = "params"  # levels evenly spaced in params or flops
    method: str = "obs"  # obs (second-order with weight update) | activation (ranking only)
    percdamp: float = 0.01  # Hessian dampening as a fraction of mean(diag H)
    neuron_step: int = 0  # neurons removed per OBS step; 0 = automatic (width // 96)
    attention_units: str = "groups"  # groups: KV groups and query heads (GQA) | query_heads: K/V always kept (DarwinLM)
    storage_dtype: str = "model"  # dtype of the stored level weights: model (the model's own) | bfloat16 | float32
    # where the database is kept: shared = the store in the evoprune cache ($EVOPRUNE_CACHE/databases), built
    # once per model, calibration text and settings and reused by every run and target (the run folder links to
    # it) | run = inside the run folder, for this run alone | a folder path = a store of your own
    store: str = "shared"


PROFILES = {
    # DarwinLM's values (paper, section 4): 16 offspring, 200 generations, 4 selection stages.
    # The paper starts from the uniform parent (init_samples=0).
    "paper": dict(offspring=16, generations=200, train_tokens=[10_000, 50_000, 100_000, 200_000],
                  fitness_tokens=[1024, 2048, 4096, 8192], survivors=[8, 4, 2, 1], init_samples=0, lr=1e-5,
                  first_parent="uniform"),
    # No evolution: the MIP assembly of replace-one KLs (Puzzle's scoring; about 6 min on SmolLM2-135M and
    # 2 CPU cores), checked against the uniform genotype on 512 / 1,024 / 2,048 fitness tokens; the
    # better of the two is the result. It gave the best dev-text result measured within 15 minutes of
    # search at 50% (results/unseen_text.md); brief training did not pay for its time at this scale.
    "mip": dict(offspring=16, generations=0, train_tokens=[0, 0, 0], fitness_tokens=[512, 1024, 2048],
                survivors=[4, 2, 1], init_samples=0, lr=1e-4, first_parent="mip"),
    # The MIP start, then six generations of KL-only level-switch evolution: -4% dev-text perplexity at
    # 25% over 3 seeds, mixed at 50% (results/unseen_text.md, finding 6); about twice the time of `mip`.
    "evolve": dict(offspring=16, generations=6, train_tokens=[0, 0, 0], fitness_tokens=[512, 1024, 2048],
                   survivors=[4, 2, 1], init_samples=0, lr=1e-4, first_parent="mip"),
}
# Former profile names: still accepted for one release, with a one-line note.
RENAMED_PROFILES = {"quick": "mip"}
# Former field names (dotted) -> the field that took their place: accepted for one release with a one-line
# note, in YAML files, overrides and the Python API alike (`load_config`).
RENAMED_FIELDS = {"database.multiple": ("prune.multiple", "one multiple for prune, darwin and nas")}
# Former values of a field -> the value that took their place, accepted the same way.
RENAMED_VALUES = {"search.latency_engine": {"torch": "transformers"}}


@dataclass
class SearchConfig:
    profile: str = "mip"  # mip (the MIP assembly of replace-one KLs, no evolution; CPU minutes) | evolve (the
    # MIP start, then 6 generations of KL-only evolution) | paper (DarwinLM's training-aware evolution from the
    # uniform genotype): defaults for the fields below that are left null
    metric: str = "params"  # budget in params, flops (per token) or latency (measured per block, see latency_*)
    offspring: int | None = None  # offspring per generation
    generations: int | None = None  # generations
    train_tokens: list[int] | None = None  # per stage: tokens of brief training before scoring (0 = KL only)
    fitness_tokens: list[int] | None = None  # per stage: tokens the KL is measured on
    survivors: list[int] | None = None  # per stage: candidates kept
    init_samples: int | None = None  # random genotypes scored to pick the first parent (0 = start uniform)
    first_parent: str | None = None  # uniform (DarwinLM) | mip: the genotype whose summed replace-one KLs
    # (each module alone at each level, the rest dense; Puzzle) are least, solved by MIP; then evolution
    replace_one_tokens: int = 1024  # fitness-pool tokens the replace-one KLs are measured on
    replace_one_all_levels: bool = False  # measure every level (slow); else removed + half cost, rest from OBS errors
    predicted_front: int = 7  # darwin with several sizes: also the MIP's own front (RUN/predicted_front/), the MIP
    # assembly at every 2.5% of block sparsity from 20% to 80% with its predicted KL (its summed replace-one KLs),
    # this many points of it, spread evenly, measured on held-out blocks, and the rank correlation (Spearman) of
    # predicted and measured KL; 0 = none
    predicted_front_tokens: int = 2048  # held-out tokens each measured point of the predicted front is scored on
    max_minutes: float | None = None  # end the search after the generation that passes this much search time
    mutation_scales: list[int] = field(default_factory=lambda: [1])  # offspring k: scales[k % n] x DarwinLM's switches
    fitness_pool: int = 32  # calibration blocks after the database's that each selection draws its fitness
    # blocks from, anew every generation; 0 = always the database's first calibration blocks
    lr: float | None = None  # AdamW learning rate of the brief training (paper: DarwinLM's 1e-5; mip, evolve: 1e-4)
    train_loss: str = "lm"  # brief training objective: lm, or kd / lm+kd from the dense model (online)
    train_pool: int = 0  # train blocks each selection's brief training starts at a random one of (a cycle),
    # anew every generation; 0 = every selection trains on the same first blocks
    train_embeddings: bool = False  # brief training also trains embeddings and LM head (else shared with the
    # dense model, frozen, never copied)
    trade: bool = True  # let attention and MLP (and depth, via level 0) trade budget with each other
    latency_mode: str = "prefill"  # latency budget: prefill (latency_tokens at once) or decode (1 token, that context)
    latency_tokens: int = 128
    # --metric latency: the latency table is timed in transformers (each block alone, in PyTorch) | llamacpp
    # (GGUF files of each block shape, prefill / decode in llama.cpp; see darwinlm/llamacpp_latency.py)
    latency_engine: str = "transformers"
    space: str = "full"  # darwin and nas: full (every shape evoprune prunes to) | nemotron-nas: only shapes that
    # vLLM, SGLang, TensorRT-LLM and mlx-lm serve as Nemotron-NAS checkpoints (attention whole or removed, MLP
    # widths at multiples of 256, hidden size kept), so that every result exports with --format nemotron-nas

    def __post_init__(self):
        if self.profile in RENAMED_PROFILES:
            log.warning("search.profile %s is now called %s (%s); the old name works for one release", self.profile,
                        RENAMED_PROFILES[self.profile], "the MIP assembly of replace-one KLs, no evolution")
            self.profile = RENAMED_PROFILES[self.profile]

    def resolved(self) -> dict:
        base = PROFILES.get(self.profile, PROFILES["mip"])
        return {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in base.items()}


SERVING_FORMATS = ("hf", "gguf", "nemotron-nas")  # export.format: the model folder alone, or also one of these
GGUF_QUANTS = ("f32", "f16", "q8_0", "q4_k_m")


NAS_QUALITY = ("kl", "loss")  # nas objectives: quality (minimised; the pick's `lowest`)
NAS_COST = ("params", "flops", "latency")  # and cost
NAS_SAMPLERS = ("local", "nsga2", "random")
NAS_PICKS = ("target", "knee")
NAS_WEIGHTS = ("database", "importance")
NAS_STARTS = ("mip", "uniform")
FULL_SPACE = "full"


@dataclass
class NasConfig:
    """`evoprune nas`: the sub-network search. Its size target is prune.sparsity / prune.target_params."""

    # 2 or 3 of kl, loss (quality: KL to the dense model, held-out loss) and params, flops, latency (cost), all
    # minimised
    objectives: list[str] = field(default_factory=lambda: ["kl", "params"])
    trials: int = 40  # completed search trials (a rerun with more extends the study)
    # local (multi-objective local search; the best front of the three in results/nas.md) | nsga2 (NSGA-II; random
    # search for its first 50 trials) | random
    sampler: str = "local"
    # the exported front point: target (the lowest-KL one with at most the parameters of prune.sparsity /
    # prune.target_params) | knee; null = target with params among the objectives, else knee
    pick: str | None = None
    supernet_steps: int = 0  # weight-sharing training steps before the search (0 = none; weights importance only)
    # search only sub-networks of these sparsities [LOW, HIGH] (fractions of the block parameters removed, the
    # unit of prune.sparsity; converted to total parameters through the dense model's shape), the others skipped
    # unevaluated; full = the whole space; null = [0.1, 0.75] with params among the objectives, else full
    sparsity_range: list[float] | str | None = None
    # the sub-networks searched and their weights: database (every module's levels in the second-order database,
    # the kept weights updated by OBS, as darwin's; database.* sets it; the better front in results/nas_weights.md)
    # | importance (first-k slices of the importance-sorted model: hidden size, layers, heads, MLP width; weights
    # unchanged)
    weights: str = "database"
    # the first trials of a new study with weights database: mip (the MIP assembly of replace-one KLs, as darwin's mip
    # profile, one genotype every mip_step of block sparsity across the searched range; the scores are shared
    # with darwin through the database's store; search.replace_one_tokens and search.replace_one_all_levels set
    # them) | uniform (every module at the same share of its ladder); null = mip with weights database
    start: str | None = None
    mip_step: float = 0.05  # start mip: block sparsity between two MIP genotypes (0.1, 0.15, ... inside the range)

    def __post_init__(self):
        text = self.sparsity_range
        if isinstance(text, str) and text.strip() != FULL_SPACE and "," in text:  # LOW,HIGH as the flag takes it
            try:
                self.sparsity_range = [float(v) for v in text.split(",")]
            except ValueError:
                pass  # reported by `problems`
        elif isinstance(text, str):
            self.sparsity_range = text.strip()

    def problems(self) -> list[str]:
        p = []
        names = self.objectives
        unknown = [n for n in names if n not in NAS_QUALITY + NAS_COST]
        if unknown or not 2 <= len(names) <= 3:
            p.append(f"nas.objectives (--objectives) must be 2 or 3 of {', '.join(NAS_QUALITY + NAS_COST)}, got "
                     f"{','.join(names) or 'none'}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        repeated = sorted({o for o in names if names.count(o) > 1})
        if repeated:
            p.append(f"nas.objectives (--objectives) names {', '.join(repeated)} twice; give each objective once")
        if self.trials <= 0:
            p.append(f"nas.trials (--trials) must be a positive number, got {self.trials}")
        if self.supernet_steps < 0:
            p.append(f"nas.supernet_steps (--supernet-steps) must be 0 (no supernet training) or more, "
                     f"got {self.supernet_steps}")
        check_choice(p, "nas.sampler (--sampler)", self.sampler, NAS_SAMPLERS)
        check_choice(p, "nas.weights (--weights)", self.weights, NAS_WEIGHTS)
        if self.start is not None:
            check_choice(p, "nas.start (--start)", self.start, NAS_STARTS)
            if self.weights != "database":
                p.append(f"nas.start (--start) {self.start} chooses the first genotypes of the database's levels; give "
                         "--weights database with it, or no --start (the importance space starts from the sampler)")
        if not 0 < self.mip_step < 1:
            p.append(f"nas.mip_step must be a block sparsity between 0 and 1 (exclusive), got {self.mip_step}")
        if self.weights == "database" and self.supernet_steps:
            p.append("nas.supernet_steps (--supernet-steps) trains the importance-sorted weights; give --weights "
                     "importance with it, or no supernet steps")
        if isinstance(self.pick, str) and self.pick.startswith("params<="):
            p.append(f"nas.pick {self.pick} is the former --pick spelling; set the size as prune.target_params "
                     "(--target-params) or prune.sparsity (--sparsity) and nas.pick to target")
        elif self.pick is not None:
            check_choice(p, "nas.pick (--pick)", self.pick, NAS_PICKS)
        if self.pick == "target" and "params" not in names:
            p.append("nas.pick target needs params among the objectives (e.g. --objectives kl,params)")
        p += sparsity_range_problems(self.sparsity_range)
        return p

    def searched_range(self) -> tuple[float, float] | None:
        """The sparsities searched (low, high); None for the whole space. Only valid once `problems` is empty."""
        r = self.sparsity_range
        if r is None:
            return DEFAULT_SPARSITY_RANGE if "params" in self.objectives else None
        if r == FULL_SPACE:
            return None
        low, high = r
        return None if low <= 0 and high >= 1 else (float(low), float(high))

    def start_method(self) -> str | None:
        """The first trials of a new study: mip or uniform with weights database (null resolved), else None."""
        if self.weights != "database":
            return None
        return self.start or "mip"

    def pick_rule(self) -> str:
        """The pick asked for: target or knee (null resolved)."""
        if self.pick is not None:
            return self.pick
        return "target" if "params" in self.objectives else "knee"


# nas.sparsity_range with params among the objectives: about what 0.4-0.9 of the total parameters covered
# on SmolLM2-135M (0.41-0.92), holding the default target prune.sparsity=0.5 (0.61 of its parameters)
DEFAULT_SPARSITY_RANGE = (0.1, 0.75)


def sparsity_range_problems(value: Any, name: str = "nas.sparsity_range (--sparsity-range)") -> list[str]:
    """What is wrong with a sparsity range: `full`, or [LOW, HIGH] with 0 <= LOW < HIGH <= 1."""
    if value is None or value == FULL_SPACE:
        return []
    if isinstance(value, str) or len(value) != 2:
        return [f"{name} takes two sparsities LOW,HIGH (fractions of the block parameters removed), e.g. "
                f"0.3,0.7, or `{FULL_SPACE}` for the whole space; got {value!r}"]
    low, high = value
    if not 0 <= low < high <= 1:
        return [f"{name} needs 0 <= LOW < HIGH <= 1 (fractions of the block parameters removed), "
                f"got {low:g},{high:g}"]
    return []


@dataclass
class RefitConfig:
    # After darwin chooses its model (every size of a family): re-solve each kept output projection (o_proj,
    # down_proj) layer by layer on the pruned model's own inputs, on the database's calibration blocks
    # (obs/refit.py). none | self: the module's dense output on those inputs (the level's OBS problem with
    # the layer's new Hessian, SparseGPT's sequential mode) | dense: the dense module's output on the dense
    # model's inputs | residual: the dense model's residual stream after the module
    target: str = "none"
    percdamp: float = 0.01  # dampening as a fraction of mean(diag H), pulling towards the database's weights


@dataclass
class BldConfig:
    # Blockwise local distillation (Puzzle's BLD), after darwin chooses its model and after the re-fit: every
    # kept decoder layer trained alone (AdamW, cosine to lr/10) to reproduce the dense layer's output, on
    # train-split blocks (training/blockwise.py). Tokens each layer trains on; 0 = off
    tokens: int = 0
    lr: float = 1e-4  # peak AdamW learning rate
    weights: str = "all"  # all: every weight of the layer (projections, biases, norms) | outputs: o_proj, down_proj
    # dense: each layer's input is the dense model's hidden states (layers independent, could run in parallel) |
    # pruned: the pruned model's own, through the layers already trained (sequential)
    inputs: str = "dense"
    loss: str = "nmse"  # nmse: squared error / squared dense change of the layer (Puzzle's normalized MSE) | mse
    blocks: int | None = None  # distinct train blocks whose hidden states are held (cycled); None = one pass


@dataclass
class ExportConfig:
    # What a prune / slice / darwin / search / nas run writes beside its HF `model/` folder (never part of a
    # run's resume identity: it only changes the last step). hf: nothing more | gguf: `model-gguf/model.gguf`
    # for llama.cpp | nemotron-nas: `model-nemotron-nas/`, a DeciLM folder vLLM, SGLang, TensorRT-LLM serve
    format: str = "hf"
    quant: str | None = None  # gguf weight type: f32 | f16 | q8_0 | q4_k_m; None = f16


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    nas: NasConfig = field(default_factory=NasConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    refit: RefitConfig = field(default_factory=RefitConfig)
    bld: BldConfig = field(default_factory=BldConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    seed: int = 0  # for every random choice
    # Budget (GiB) of anonymous memory per stage of darwin / database / search / prune / slice / eval, checked before
    # work starts against the estimate of docs/memory.md (`memory_estimate.py`); prune, slice, database and eval keep
    # the dense weights mapped when a copy would not fit (model.bounded=auto, `memory_plan.py`); None = no check.
    max_memory_gib: float | None = None

    def problems(self) -> list[str]:
        p = []
        d, pr, ev = self.data, self.prune, self.eval
        if self.model.dtype not in ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16"):
            p.append(f"model.dtype must be float32, bfloat16 or float16, got {self.model.dtype!r}")
        if self.model.compute_dtype not in ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"):
            p.append(f"model.compute_dtype must be auto, float32, bfloat16 or float16, got {self.model.compute_dtype!r}")
        p += device_problems(self.model.device)
        if self.model.bounded not in (True, False, "auto"):
            p.append(f"model.bounded must be true, false or auto, got {self.model.bounded!r}")
        for name, value in (("data.seq_len", d.seq_len), ("data.calibration_blocks", d.calibration_blocks),
                            ("data.eval_blocks", d.eval_blocks), ("data.batch_size", d.batch_size),
                            ("prune.multiple", pr.multiple), ("eval.top_k", ev.top_k),
                            ("eval.prompt_len", ev.prompt_len), ("eval.new_tokens", ev.new_tokens),
                            ("eval.repeats", ev.repeats), ("eval.batch_size", ev.batch_size),
                            ("eval.unseen_blocks", ev.unseen_blocks), ("eval.paper_seq_len", ev.paper_seq_len)):
            if value <= 0:
                p.append(f"{name} must be positive, got {value}")
        if ev.reference_blocks is not None and ev.reference_blocks <= 0:
            p.append(f"eval.reference_blocks must be positive (or null: all held-out blocks), got {ev.reference_blocks}")
        if d.max_tokens is not None and d.max_tokens <= 0:
            p.append(f"data.max_tokens must be positive (or null: all rows), got {d.max_tokens}")
        if d.streaming and d.max_tokens is None:
            p.append("data.streaming reads a hub dataset up to data.max_tokens: set data.max_tokens too")
        if self.max_memory_gib is not None and not 0 < self.max_memory_gib < math.inf:
            p.append(f"max_memory_gib (--max-memory) must be a positive, finite number of GiB, got {self.max_memory_gib}")
        if ev.streamed not in (True, False, "auto"):
            p.append(f"eval.streamed must be true, false or auto, got {ev.streamed!r}")
        if ev.warmup < 0:
            p.append(f"eval.warmup must be >= 0, got {ev.warmup}")
        for name, values in (("eval.latency_batch_sizes", ev.latency_batch_sizes),
                             ("eval.latency_prompt_lens", ev.latency_prompt_lens)):
            if values is not None and not values:
                p.append(f"{name} must list at least one value")
            elif values is not None and any(v <= 0 for v in values):
                p.append(f"{name} must hold positive integers, got {values}")
        if pr.method not in ("uniform", "depth"):
            p.append(f"prune.method must be uniform or depth, got {pr.method!r}")
        if pr.sparsity is not None and pr.target_params is not None:
            p.append("give only one of prune.sparsity and prune.target_params")
        for size in pr.sizes() if pr.sparsity != [] and pr.target_params != [] else []:
            if size.sparsity is not None and not 0 < size.sparsity < 1:
                p.append(f"prune.sparsity must be strictly between 0 and 1, got {size.sparsity}")
            if size.target_params is not None and size.target_params <= 0:
                p.append(f"prune.target_params must be positive, got {size.target_params}")
        if pr.sparsity == [] or pr.target_params == []:
            p.append("prune.sparsity / prune.target_params: give at least one size")
        db, se = self.database, self.search
        if db.num_levels < 2:
            p.append(f"database.num_levels must be at least 2, got {db.num_levels}")
        check_choice(p, "database.spacing", db.spacing, ("params", "flops"))
        check_choice(p, "database.method", db.method, ("obs", "activation"))
        check_choice(p, "database.attention_units", db.attention_units, ("groups", "query_heads"))
        check_choice(p, "database.storage_dtype", db.storage_dtype, ("model", "bfloat16", "float16", "float32"))
        check_choice(p, "refit.target", self.refit.target, ("none", "self", "dense", "residual"))
        if not 0 < self.refit.percdamp < math.inf:
            p.append(f"refit.percdamp must be positive, got {self.refit.percdamp}")
        p += bld_problems(self.bld)
        if not isinstance(db.store, str) or not db.store:
            p.append(f"database.store must be shared, run or a folder, got {db.store!r}")
        if se.profile not in PROFILES:
            p.append(f"search.profile must be one of {', '.join(PROFILES)}, got {se.profile!r}")
        check_choice(p, "search.metric", se.metric, ("params", "flops", "latency"))
        check_choice(p, "search.latency_engine (--latency-engine)", se.latency_engine, ENGINES)
        check_choice(p, "eval.engine (--engine)", ev.engine, ENGINES)
        if ev.limit is not None and ev.limit <= 0:
            p.append(f"eval.limit (--limit) must be positive, got {ev.limit}")
        if ev.num_fewshot is not None and ev.num_fewshot < 0:
            p.append(f"eval.num_fewshot (--num-fewshot) must be 0 or more, got {ev.num_fewshot}")
        if ev.engine == "llamacpp" and ev.tasks is not None:
            p.append("eval.tasks (--tasks) runs in transformers only; drop it or use eval.engine transformers "
                     "(--engine transformers)")
        if ev.engine != "llamacpp" and ev.tokenizer is not None:
            p.append("eval.tokenizer (--tokenizer) applies to eval.engine llamacpp (--engine llamacpp) only; "
                     "transformers uses the model's own")
        check_choice(p, "eval.repack", ev.repack, ("auto", "on", "off"))
        if ev.threads is not None and ev.threads <= 0:
            p.append(f"eval.threads must be positive (or null for this process's cores), got {ev.threads}")
        check_choice(p, "search.space", se.space, ("full", "nemotron-nas"))
        check_choice(p, "export.format", self.export.format, SERVING_FORMATS)
        if self.export.quant is not None:
            check_choice(p, "export.quant", self.export.quant, GGUF_QUANTS)
            if self.export.format != "gguf":
                p.append("export.quant (--quant) applies to export.format=gguf (--format gguf) only")
        if se.latency_mode not in ("prefill", "decode") or se.latency_tokens <= 0:
            p.append("search.latency_mode must be prefill or decode and search.latency_tokens positive")
        r = se.resolved()
        stages = {len(r["train_tokens"]), len(r["fitness_tokens"]), len(r["survivors"])}
        if len(stages) != 1:
            p.append("search.train_tokens, search.fitness_tokens and search.survivors need one entry per stage")
        if any(v < 0 for v in r["train_tokens"]) or any(v <= 0 for v in r["fitness_tokens"] + r["survivors"]):
            p.append("search stage tokens must be >= 0 (training) / > 0 (fitness), survivors > 0")
        if not se.mutation_scales or any(m <= 0 for m in se.mutation_scales):
            p.append(f"search.mutation_scales must be positive integers, got {se.mutation_scales}")
        check_choice(p, "search.first_parent", r["first_parent"], ("uniform", "mip"))
        if se.max_minutes is not None and se.max_minutes <= 0:
            p.append(f"search.max_minutes must be positive, got {se.max_minutes}")
        if se.predicted_front < 0 or se.predicted_front in (1, 2):
            p.append(f"search.predicted_front must be 0 (none) or 3 or more measured points (a rank correlation "
                     f"needs 3), got {se.predicted_front}")
        if se.predicted_front_tokens <= 0:
            p.append(f"search.predicted_front_tokens must be positive, got {se.predicted_front_tokens}")
        if se.replace_one_tokens <= 0:
            p.append(f"search.replace_one_tokens must be positive, got {se.replace_one_tokens}")
        if r["offspring"] <= 0 or r["generations"] < 0 or r["init_samples"] < 0:
            p.append("search.offspring must be positive, search.generations and search.init_samples >= 0")
        if not r["lr"] > 0:
            p.append(f"search.lr must be positive, got {r['lr']}")
        check_choice(p, "search.train_loss", se.train_loss, ("lm", "kd", "lm+kd"))
        if se.train_pool < 0:
            p.append(f"search.train_pool must be >= 0 blocks, got {se.train_pool}")
        if se.fitness_pool < 0:
            p.append(f"search.fitness_pool must be >= 0 blocks, got {se.fitness_pool}")
        p += self.nas.problems()
        return p


ENGINES = ("transformers", "llamacpp")  # eval.engine and search.latency_engine


def device_problems(device: Any, name: str = "model.device (--device)") -> list[str]:
    """A device name torch knows, written as every command takes it (whether this machine has it is checked
    before work, `models.check_device`)."""
    if isinstance(device, str) and DEVICE.fullmatch(device):
        return []
    return [f"{name} must be {DEVICES}, got {device!r}"]


def check_choice(problems: list[str], name: str, value: Any, options: tuple | list) -> None:
    """Append "`name` must be a, b or c, got value" to `problems` unless `value` is one of `options`."""
    if value not in options:
        choices = ", ".join(map(str, options[:-1])) + f" or {options[-1]}" if len(options) > 1 else str(options[0])
        problems.append(f"{name} must be {choices}, got {value!r}")


def bld_problems(bld: BldConfig) -> list[str]:
    """What is wrong with a `bld` section (the choices are training/blockwise.py's)."""
    p: list[str] = []
    if isinstance(bld.tokens, bool) or not isinstance(bld.tokens, int) or bld.tokens < 0:
        p.append(f"bld.tokens must be 0 (off) or a positive number of tokens per layer, got {bld.tokens!r}")
    if not 0 < bld.lr < math.inf:
        p.append(f"bld.lr must be positive and finite, got {bld.lr}")
    check_choice(p, "bld.weights", bld.weights, ("all", "outputs"))
    check_choice(p, "bld.inputs", bld.inputs, ("dense", "pruned"))
    check_choice(p, "bld.loss", bld.loss, ("nmse", "mse"))
    if bld.blocks is not None and bld.blocks <= 0:
        p.append(f"bld.blocks must be positive (or null for one pass over bld.tokens), got {bld.blocks}")
    return p


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict, prefix: str = "", problems: list[str] | None = None) -> Any:
    """Build dataclass `cls` from `data`, collecting unknown keys and type errors in `problems`."""
    problems = [] if problems is None else problems
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            problems.append(f"unknown key {prefix}{key} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                problems.append(_not_a_value(f"{prefix}{f.name}", value))
                continue
            kwargs[f.name] = from_dict(hint, value, f"{prefix}{f.name}.", problems)
        else:
            ok, converted = _coerce(value, hint)
            if not ok:
                problems.append(f"{prefix}{f.name} must be {_type_name(hint)}, got {value!r}")
                continue
            kwargs[f.name] = _current_value(f"{prefix}{f.name}", converted)
    return cls(**kwargs)


def _current_value(name: str, value: Any) -> Any:
    """`value` of field `name`, or the value that took its place (`RENAMED_VALUES`), with a one-line note."""
    renamed = RENAMED_VALUES.get(name, {})
    if isinstance(value, str) and value in renamed:
        log.warning("%s %s is now called %s; the old name works for one release", name, value, renamed[value])
        return renamed[value]
    return value


def _renamed_key(key_path: list[str]) -> list[str]:
    """The current name of a dotted field (`RENAMED_FIELDS`), with a one-line note when it is a former one."""
    former = ".".join(key_path)
    if former not in RENAMED_FIELDS:
        return key_path
    current, why = RENAMED_FIELDS[former]
    log.warning("%s is now %s (%s); the old name works for one release", former, current, why)
    return current.split(".")


def _rename_former_fields(data: dict, problems: list[str]) -> None:
    """Move the former fields of a YAML mapping to their current names, in place."""
    for former in RENAMED_FIELDS:
        *section, key = former.split(".")
        node = data
        for k in section:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        value = node.pop(key)
        path = _renamed_key(former.split("."))
        target = data
        for k in path[:-1]:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                break
        else:
            if path[-1] in target:
                problems.append(f"{former} is the former name of {'.'.join(path)}; give only {'.'.join(path)}")
            else:
                target[path[-1]] = value


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if value is None:
        return type(None) in options, None
    for opt in options:
        if typing.get_origin(opt) is list and isinstance(value, list):
            (item,) = typing.get_args(opt)
            items = [_coerce(v, item) for v in value]
            if all(ok for ok, _ in items):
                return True, [v for _, v in items]
        if opt is bool and isinstance(value, bool):
            return True, value
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if opt is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                pass
        if opt is str and isinstance(value, str):
            return True, value
    return False, None


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint) if typing.get_origin(hint) is not list else (hint,)
    return " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args or (hint,))


def _not_a_value(name: str, value: Any) -> str:
    return f"{name} is a section, not a value (got {value!r}): set its fields, as in {name}.FIELD=VALUE"


def _is_section(cls: type, key_path: list[str]) -> bool:
    for key in key_path:
        cls = typing.get_type_hints(cls).get(key) if dataclasses.is_dataclass(cls) else None
    return dataclasses.is_dataclass(cls)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: what the YAML parser found wrong, and where."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(error, 'problem', None) or ' '.join(str(error).split())}{where}"


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(e)}); "
                          f"quote it, e.g. {key}='...'") from None
    return key.strip().split("."), value


SHIPPED_CONFIGS = Path(__file__).with_name("configs")  # the YAML files installed with the package


def shipped_configs() -> list[str]:
    """The names of the configs installed with evoprune (`--config NAME` from any directory)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def config_file(path: str | Path) -> Path:
    """The YAML file `path` names: a file if there is one, else a shipped config named by `NAME`, `NAME.yaml`
    or `configs/NAME.yaml` (the repository's spelling, so its commands work from an installed package)."""
    path = Path(path)
    if path.is_file() or path.parent not in (Path("."), Path("configs")):
        return path
    shipped = SHIPPED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path


def read_yaml_file(path: Path) -> dict:
    """The mapping in YAML file `path`; a one-line ConfigError naming the file when it cannot be used."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (a YAML file, or a shipped config: "
                          f"{', '.join(shipped_configs())})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({_yaml_problem(e)}); fix the file there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = RunConfig,
                base: dict | None = None) -> Any:
    """Read YAML `path` (a file or a shipped config's name; or defaults), apply `overrides` then `base`-level
    edits, validate, and return `cls`."""
    data = read_yaml_file(config_file(path)) if path is not None else {}
    problems: list[str] = []
    _rename_former_fields(data, problems)
    for key_path, value in [parse_override(o) for o in overrides or []] + list((base or {}).items()):
        key_path = _renamed_key(key_path if isinstance(key_path, list) else key_path.split("."))
        node = data
        for depth, k in enumerate(key_path[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                name = ".".join(key_path[:depth + 1])
                raise ConfigError("invalid configuration: " + (
                    _not_a_value(name, node) if _is_section(cls, key_path[:depth + 1])
                    else f"{name} is a value, not a section, so {'.'.join(key_path)} does not exist"))
        node[key_path[-1]] = value
    cfg = from_dict(cls, data, "", problems)
    if not problems and hasattr(cfg, "problems"):
        problems += cfg.problems()
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return cfg


def with_fields(cfg: Any, fields: dict) -> Any:
    """A copy of the validated config `cfg` with dotted `fields` set (values of the fields' own types), validated."""
    cfg = copy.deepcopy(cfg)
    for key, value in fields.items():
        *sections, name = key.split(".")
        node = cfg
        for section in sections:
            node = getattr(node, section)
        if not hasattr(node, name):
            raise ConfigError(f"invalid configuration: unknown key {key}")
        setattr(node, name, value)
    problems = cfg.problems() if hasattr(cfg, "problems") else []
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
