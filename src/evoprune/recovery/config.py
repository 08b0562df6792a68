"""Configuration of a recovery-training run (`evoprune train`): YAML / dotted overrides -> dataclasses."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from ..config import DataConfig, ModelConfig, check_choice, device_problems
from ..training.config import TrainConfig

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class RecoveryConfig:
    teacher: str | None = None  # dense model to distil from (same tokenizer); None = LM loss only
    tokens: int = 1_000_000  # training token budget (stopping rule), counted over all processes
    loss: str | None = None  # lm | kd | lm+kd; None = lm+kd with a teacher, lm without
    kd_weight: float = 0.5  # weight of the distillation term in lm+kd
    kd_temperature: float = 2.0  # softmax temperature of the distillation term
    hidden_weight: float = 0.0  # weight of the last-hidden-state MSE (skipped when hidden sizes differ)
    teacher_source: str = "online"  # online (teacher runs every step) | cached (its top-k on the train blocks, once)
    teacher_top_k: int = 64  # cached teacher: tokens kept per position + the rest mass (8k+4 bytes/token on disk)
    lr: float = 1e-4  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay (matrices only)
    warmup_steps: int = 10  # linear warm-up steps
    schedule: str = "cosine"  # cosine | constant after warm-up
    min_lr_ratio: float = 0.1  # final lr / peak lr of the cosine schedule
    batch_size: int = 8  # blocks per micro-batch over ALL processes (each takes batch_size / world_size)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float | None = 1.0  # max global grad norm; null = no clipping
    precision: str = "fp32"  # fp32 | bf16 (autocast through Accelerate)
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    distributed: str = "ddp"  # ddp | fsdp (FSDP through Accelerate needs GPUs)
    lora: bool = False  # train LoRA adapters (merged into the weights on export) instead of all weights
    lora_r: int = 8  # LoRA rank
    lora_alpha: float = 16.0  # LoRA scaling numerator
    lora_dropout: float = 0.0  # dropout on the LoRA branch
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # module names to adapt
    train_blocks: int | None = None  # use at most this many train-split blocks (null = all); cycled
    eval_every: int = 50  # held-out perplexity every N optimizer steps (0 = only at the start and end)
    checkpoint_every: int = 50  # resumable checkpoint every N optimizer steps (0 = only at the end)
    keep_checkpoints: int = 1  # most recent checkpoints kept

    @property
    def resolved_loss(self) -> str:
        return self.loss or ("lm+kd" if self.teacher else "lm")

    def train_config(self, seed: int) -> TrainConfig:
        """The trainer core's hyper-parameters (batch_size is the global micro-batch)."""
        return TrainConfig(lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
                           grad_accum=self.grad_accum, grad_clip=self.grad_clip, warmup_steps=self.warmup_steps,
                           schedule=self.schedule, min_lr_ratio=self.min_lr_ratio, seed=seed,
                           loss=self.resolved_loss, kd_temperature=self.kd_temperature, kd_weight=self.kd_weight,
                           hidden_weight=self.hidden_weight)


@dataclass
class RecoveryEvalConfig:
    # Perplexity on text of other genres than the run's data (dev: news, how-to, math; test: Jane Austen,
    # the Debian Policy Manual) before and after training, as every other command reports it; see
    # data/unseen_sources.py.
    unseen: bool = True
    unseen_blocks: int = 8  # blocks of data.seq_len tokens per unseen genre


@dataclass
class RecoveryRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the pruned student
    data: DataConfig = field(default_factory=DataConfig)  # source, seq_len, eval_blocks, batch_size (eval)
    train: RecoveryConfig = field(default_factory=RecoveryConfig)
    eval: RecoveryEvalConfig = field(default_factory=RecoveryEvalConfig)
    seed: int = 0
    # Budget (GiB) of anonymous memory per stage, checked before work starts against the estimate of docs/memory.md
    # (`memory_estimate.estimate_train`); the teacher stays mapped when a copy would not fit; None = no check.
    max_memory_gib: float | None = None

    def problems(self) -> list[str]:
        p = []
        t, d = self.train, self.data
        p += device_problems(self.model.device)
        if self.max_memory_gib is not None and not 0 < self.max_memory_gib < math.inf:
            p.append(f"max_memory_gib (--max-memory) must be a positive, finite number of GiB, got {self.max_memory_gib}")
        if self.model.bounded not in (True, False, "auto"):
            p.append(f"model.bounded must be true, false or auto, got {self.model.bounded!r}")
        if t.tokens < 0:
            p.append(f"train.tokens must be >= 0, got {t.tokens}")
        check_choice(p, "train.precision", t.precision, ("fp32", "bf16"))
        check_choice(p, "train.distributed", t.distributed, ("ddp", "fsdp"))
        check_choice(p, "train.teacher_source", t.teacher_source, ("online", "cached"))
        if t.teacher_source == "cached" and t.hidden_weight > 0:
            p.append("train.hidden_weight > 0 needs train.teacher_source=online (a cached teacher has no hidden states)")
        if not isinstance(t.teacher_top_k, int) or t.teacher_top_k < 1:
            p.append(f"train.teacher_top_k must be a positive integer, got {t.teacher_top_k!r}")
        if t.resolved_loss != "lm" and not t.teacher:
            p.append(f"train.loss {t.resolved_loss} needs a teacher (--teacher DENSE)")
        for name in ("lora_r", "eval_every", "checkpoint_every", "keep_checkpoints"):
            value = getattr(t, name)
            if value < (1 if name in ("lora_r", "keep_checkpoints") else 0):
                p.append(f"train.{name} must be {'positive' if name in ('lora_r', 'keep_checkpoints') else '>= 0'}, "
                         f"got {value}")
        if t.train_blocks is not None and t.train_blocks <= 0:
            p.append(f"train.train_blocks must be positive or null, got {t.train_blocks}")
        if not 0 <= t.lora_dropout < 1:
            p.append(f"train.lora_dropout must be in [0, 1), got {t.lora_dropout}")
        if not t.lora_targets:
            p.append("train.lora_targets must name at least one module")
        for name in ("seq_len", "eval_blocks", "batch_size"):
            if getattr(d, name) <= 0:
                p.append(f"data.{name} must be positive, got {getattr(d, name)}")
        if self.eval.unseen_blocks <= 0:
            p.append(f"eval.unseen_blocks must be positive, got {self.eval.unseen_blocks}")
        if not p:
            try:
                t.train_config(self.seed)
            except Exception as e:  # TrainConfig's own UserError lists its problems
                p.append(str(e))
        return p


# Fields that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = {"eval_every", "checkpoint_every", "keep_checkpoints"}


def run_identity(cfg: RecoveryRunConfig) -> dict:
    """What makes two runs the same run: everything but logging / checkpoint frequencies, evaluation and devices."""
    d = dataclasses.asdict(cfg)
    del d["eval"]  # measures the model, never changes what is trained
    del d["max_memory_gib"]  # a teacher kept mapped gives the copy's numbers
    d["train"] = {k: v for k, v in d["train"].items() if k not in RESUMABLE_CHANGES}
    d["model"] = {k: v for k, v in d["model"].items() if k != "device"}
    return d


def identity_digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
