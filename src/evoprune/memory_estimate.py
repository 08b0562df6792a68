"""Memory each stage of a darwin run will need, estimated from the model's shape and the config.

The formulas are those of docs/memory.md ("Anonymous memory per stage"), in its notation: d hidden
size, V vocabulary, P_l the parameters of decoder layer l, P_b their sum, P_e = V·d one embedding
matrix, s / c the bytes of a stored / computed element, B batch (blocks), S block length. Each
estimate is *anonymous* memory beyond the memory-mapped dense weights, which are file-backed and
shared; on a GPU the dense weights are resident in its memory, so they are added to every stage.

`check_memory_budget` turns the estimates into a refusal before any work starts (`--max-memory`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch.params import layer_params, total_params
from .arch.shape import ModelShape
from .config import RunConfig
from .errors import UserError
from .weights.compute_dtype import HEAD_SLICE_BYTES

GIB = 2**30
LOGITS_CHUNK = 128 * 2**20  # streamed KL: at most one 128 MiB chunk of logits (evaluate/streamed_kl.py)
EXPORT_SHARD = 2 * GIB  # streamed export writes 2 GiB shards (arch/streamed_export.py)
EXPORT_CHUNK = 64 * 2**20  # ... converting 64 MiB of a tensor at a time
# a chunk of logits exists ~6 times at the held-out figures' peak: logits, log-probs, the NLL's and the KL's
# temporaries (gather, scatter, logsumexp) (measured: tests/test_memory_promise.py)
LOGIT_COPIES = 6
LOADED_OBJECTS = 64 * 2**20  # the tokenizer and the model's Python objects (measured: 45-60 MiB for 49k tokens)
ACTIVATION_BYTES = 54  # per token, hidden unit and layer, in 16-bit elements (docs/memory.md)

# Stage names in pipeline order, with the setting that lowers each one's estimate.
STAGES = {
    "database": "lower data.calibration_blocks or data.seq_len",
    "teacher caches": "lower data.batch_size or data.seq_len",
    "replace-one": "lower search.replace_one_tokens or set search.first_parent=uniform",
    "selection": "lower search.fitness_tokens",
    "training-aware selection": "lower data.batch_size or data.seq_len, or train in no stage (search.train_tokens all 0)",
    "export": "",  # one 2 GiB shard and one layer: nothing to lower
}
PHASE_STAGES = {"database": ("database",), "search": tuple(s for s in STAGES if s != "database"),
                "darwin": tuple(STAGES)}


def hessian_element_bytes(n: int) -> int:
    """Bytes per Hessian element of a module with `n` inputs: fp64 up to 4,096, fp32 above (b(n))."""
    return 8 if n <= 4096 else 4


def estimate_stages(shape: ModelShape, cfg: RunConfig, device: str, stored_bytes: int,
                    compute_bytes: int) -> dict[str, int]:
    """Estimated anonymous bytes of each stage the configured darwin run goes through.

    Args:
        shape: the dense model's shape.
        cfg: the run configuration (data sizes, search profile, sparsity).
        device: where the model runs; on "cuda..." the dense weights count in every stage.
        stored_bytes: bytes per element of the stored (memory-mapped) weights, s.
        compute_bytes: bytes per element the layers compute in, c.

    Returns:
        Stage name -> bytes, in pipeline order; "replace-one" only with first_parent=mip and
        "training-aware selection" only when a selection stage trains.
    """
    s, c = stored_bytes, compute_bytes
    d, V = shape.hidden_size, shape.vocab_size
    B, S = cfg.data.batch_size, cfg.data.seq_len
    r = cfg.search.resolved()
    converted = c != s  # layers and head are converted to c when they run, only if c differs from s
    layers = [layer_params(shape, layer) for layer in shape.layers]
    P_b, P_l, P_e = sum(layers), max(layers, default=0), V * d
    sparsities = [size.sparsity for size in cfg.prune.sizes() if size.sparsity is not None]
    rho = 1 - min(sparsities) if sparsities else 0.5  # the largest model of a family
    head = P_e * c if converted else 0

    def database_layer(params: int, layer) -> int:
        I, q = layer.intermediate_size, layer.num_heads * shape.head_dim
        return ((params * c if converted else 0) + 3 * I * I * hessian_element_bytes(I) + d * I * 8
                + 3 * q * q * hessian_element_bytes(q))

    T_c = cfg.data.calibration_blocks * S
    estimates = {
        "database": max((database_layer(n, layer) for n, layer in zip(layers, shape.layers)), default=0)
        + 2 * T_c * d * c,
        "teacher caches": 3 * B * S * V * 4,
    }
    if r["first_parent"] == "mip":
        estimates["replace-one"] = 2 * cfg.search.replace_one_tokens * d * c + P_l * c + head
    estimates["selection"] = 2 * max(r["fitness_tokens"]) * d * c + P_l * c + head + LOGITS_CHUNK
    if any(t > 0 for t in r["train_tokens"]):
        embeddings = 2 * P_e * 4 * c if cfg.search.train_embeddings else (2 * P_e * c if converted else 0)
        estimates["training-aware selection"] = int(
            4 * rho * P_b * c  # candidate, gradients, AdamW's two moments
            + B * S * d * ACTIVATION_BYTES * shape.num_layers * c / 2  # activations kept for backward
            + B * S * V * 4  # loss logits in fp32
            + embeddings)
    estimates["export"] = int(min(EXPORT_SHARD, rho * P_b * s + P_e * s) + P_l * s)
    if device.startswith("cuda"):
        dense = (P_b + P_e * (1 if shape.tied_embeddings else 2)) * s
        estimates = {k: v + dense for k, v in estimates.items()}
    return estimates


# The stages of the commands that load the dense model for inference only, as memory.stage names them.
COMMAND_STAGES = {"prune": ("load model", "calibration", "slice", "evaluation", "export"),
                  "slice": ("load model", "slice", "evaluation", "export"),
                  "database": ("load model", "database"),
                  "eval": ("load model", "teacher cache", "evaluation"),
                  "train": ("load model", "teacher cache", "training")}
TEACHER_FULL_MAX = 64 * 2**20  # a teacher cache holds full log-probs up to this size (evaluation/teacher.py)


@dataclass(frozen=True)
class HeldModel:
    """A model of a command that loads several (eval, train), as it will be held: its shape, the bytes per element
    of its parameters, and whether they stay memory-mapped (file-backed, no anonymous copy)."""

    shape: ModelShape
    element_bytes: int
    mapped: bool

    def dense_bytes(self) -> int:
        """Anonymous bytes of its weights (none when mapped) and of its tokenizer and Python objects."""
        weights = 0 if self.mapped else total_params(self.shape) * self.element_bytes
        return weights + LOADED_OBJECTS

    def running_bytes(self, blocks: int, seq_len: int, compute_bytes: int) -> int:
        """Its forward on `blocks` x `seq_len` tokens in inference: the larger of one decoder layer (converted when
        held in another dtype than it computes in, with a batch's activations) and the LM head's moment (a slice
        of converted rows, one chunk of fp32 logits present LOGIT_COPIES times, the batch's final hidden states)."""
        c, shape = compute_bytes, self.shape
        converted = self.element_bytes != c
        P_l = max((layer_params(shape, layer) for layer in shape.layers), default=0)
        layer = (P_l * c if converted else 0) + forward_bytes(shape, blocks, seq_len, c)
        logits = min(LOGITS_CHUNK, blocks * (seq_len - 1) * shape.vocab_size * 4)
        head = (min(HEAD_SLICE_BYTES, shape.vocab_size * shape.hidden_size * c) if converted else 0) \
            + LOGIT_COPIES * logits + blocks * seq_len * shape.hidden_size * c
        return max(layer, head)


def teacher_rows_bytes(vocab: int, n_blocks: int, blocks: int, seq_len: int, top_k: int) -> tuple[int, int]:
    """(bytes of one batch of teacher rows as written into a cache, as read back) for `blocks` x `seq_len` tokens
    of a cache over `n_blocks` blocks: full fp32 log-probs when the whole cache takes at most TEACHER_FULL_MAX,
    else top-k int32 ids and fp32 log-probs plus topk's int64 ids when written, int64 ids and fp32 log-probs when
    read, and the rest mass."""
    positions = blocks * (seq_len - 1)
    if n_blocks * (seq_len - 1) * vocab * 4 <= TEACHER_FULL_MAX:
        return positions * vocab * 4, positions * vocab * 4
    k = min(top_k, vocab)
    return positions * (k * 16 + 4), positions * (k * 12 + 4)


def estimate_eval(models: dict[str, HeldModel], cfg: RunConfig, compute_bytes: int,
                  streamed: bool = False) -> dict[str, int]:
    """Estimated anonymous bytes of each stage of `evoprune eval` (`COMMAND_STAGES["eval"]`).

    Args:
        models: "model" and, with --teacher, "teacher", as they will be held.
        streamed: perplexities run layer by layer (`eval.streamed`): the hidden states of every held-out block,
            entering and leaving a layer, are held besides a batch's forward.

    Returns:
        stage -> bytes: every model's dense part, plus the stage's own tensors ("teacher cache" only with a teacher).
    """
    B, S, n = cfg.data.batch_size, cfg.data.seq_len, cfg.data.eval_blocks
    c = compute_bytes
    dense = sum(m.dense_bytes() for m in models.values())

    def running(m: HeldModel) -> int:
        hidden = 2 * n * S * m.shape.hidden_size * c if streamed else 0
        return m.running_bytes(min(B, n), S, c) + hidden

    estimates = {"load model": dense}
    read = 0
    teacher = models.get("teacher")
    if teacher is not None:
        written, read = teacher_rows_bytes(teacher.shape.vocab_size, n, min(B, n), S, cfg.eval.top_k)
        estimates["teacher cache"] = dense + teacher.running_bytes(min(B, n), S, c) + written
    estimates["evaluation"] = dense + max(running(m) for m in models.values()) + read
    return estimates


def estimate_train(student: HeldModel, teacher: HeldModel | None, cfg, compute_bytes: int) -> dict[str, int]:
    """Estimated anonymous bytes of each stage of `evoprune train` (`COMMAND_STAGES["train"]`, "teacher cache" only
    with train.teacher_source=cached), on one process.

    The student is held whole in its dtype (a) and trained: full training adds its gradients and AdamW's two
    moments (3·P·a); LoRA adds fp32 adapters with theirs (4·r·L·(6d + 3I)·4, every projection adapted). Its
    activations kept for backward are those of `estimate_stages`' training-aware stage, or with gradient
    checkpointing each layer's input plus one layer's forward; its loss holds fp32 logits, log-probs and their
    gradient (3·B·S·V·4). An online teacher adds its dense part, one forward in inference and its logits at the
    distillation temperature (2·B·S·V·4); a cached one, one batch of cached rows.

    Args:
        cfg: a `recovery.config.RecoveryRunConfig`.
    """
    t, S = cfg.train, cfg.data.seq_len
    B, a, c = t.batch_size, student.element_bytes, compute_bytes
    shape = student.shape
    d, V, L = shape.hidden_size, shape.vocab_size, shape.num_layers
    I = max((layer.intermediate_size for layer in shape.layers), default=0)
    cached = teacher is not None and t.teacher_source == "cached"
    reached = min(t.train_blocks or t.tokens, t.tokens // S + 1)  # blocks the token budget reaches, at most
    dense = student.dense_bytes() + (teacher.dense_bytes() if teacher is not None else 0)
    estimates = {"load model": dense}
    if cached:
        written, _ = teacher_rows_bytes(V, reached, cfg.data.batch_size, S, t.teacher_top_k)
        estimates["teacher cache"] = dense + teacher.running_bytes(cfg.data.batch_size, S, c) + written
    optimizer = 4 * t.lora_r * L * (6 * d + 3 * I) * 4 if t.lora else 3 * total_params(shape) * a
    if t.gradient_checkpointing:
        activations = L * B * S * d * a + forward_bytes(shape, B, S, a)
    else:
        activations = int(B * S * d * ACTIVATION_BYTES * L * a / 2)
    loss = 3 * B * S * V * 4
    if teacher is None:
        kept = student.dense_bytes()
    elif cached:
        kept = student.dense_bytes()
        loss += teacher_rows_bytes(V, reached, B, S, t.teacher_top_k)[1]
    else:
        kept = dense
        loss += teacher.running_bytes(B, S, c) + 2 * B * S * V * 4
    estimates["training"] = kept + optimizer + activations + loss
    return estimates


def forward_bytes(shape: ModelShape, blocks: int, seq_len: int, c: int) -> int:
    """Activations of one decoder layer's forward on `blocks` x `seq_len` tokens in compute bytes `c`: the
    hidden states, q/k/v and norms (≈ 4·d per token), the MLP's gate, up and product (3·I), and the attention
    scores, their softmax and the mask of SDPA's math kernel on CPU (3·h·S per token)."""
    d = shape.hidden_size
    I = max((layer.intermediate_size for layer in shape.layers), default=0)
    h = max((layer.num_heads for layer in shape.layers), default=0)
    return blocks * seq_len * (4 * d + 3 * I + 3 * h * seq_len) * c


def estimate_command(command: str, shape: ModelShape, cfg: RunConfig, stored_bytes: int, asked_bytes: int,
                     compute_bytes: int, bounded: bool) -> dict[str, int]:
    """Estimated anonymous bytes of each stage of `prune`, `slice` or `database`, beyond the process's own.

    Args:
        stored_bytes, asked_bytes, compute_bytes: bytes per element of the stored weights (s), of the dtype
            the model is asked for (`model.dtype`, a) and of the one it computes in (c).
        bounded: the dense model stays mapped as stored and runs one converted module at a time
            (`models.load_model(bounded=True)`); otherwise it is copied into the asked dtype.

    Returns:
        stage name (`COMMAND_STAGES`) -> bytes: the dense copy (none when bounded) and the tokenizer, plus the
        stage's own tensors.
    """
    d, V, S, B = shape.hidden_size, shape.vocab_size, cfg.data.seq_len, cfg.data.batch_size
    c = compute_bytes
    held = stored_bytes if bounded else asked_bytes  # bytes per element of the model's parameters
    converted = held != c
    layers = [layer_params(shape, layer) for layer in shape.layers]
    P_b, P_l, P_e = sum(layers), max(layers, default=0), V * d
    dense = (0 if bounded else (P_b + P_e * (1 if shape.tied_embeddings else 2)) * asked_bytes) + LOADED_OBJECTS
    layer = P_l * c if converted else 0  # one decoder layer converted while it runs
    head = min(HEAD_SLICE_BYTES, P_e * c) if converted else 0  # the LM head converted a slice of rows at a time
    storage = {"model": asked_bytes, "bfloat16": 2, "float16": 2, "float32": 4}
    stored_levels = storage.get(cfg.database.storage_dtype, asked_bytes)
    if command == "database":
        return {"load model": dense,
                "database": dense + _database_bytes(shape, cfg, c, converted, stored_levels,
                                                    forward_bytes(shape, B, S, c))}
    size = cfg.prune.one_size(command) if command == "prune" else cfg.prune
    rho = 1 - size.sparsity if size.sparsity is not None else 0.5
    pruned = int(rho * P_b * held)
    eval_batch = min(B, cfg.data.eval_blocks)
    layers_part = layer + forward_bytes(shape, B, S, c)
    logits = min(LOGITS_CHUNK, B * (S - 1) * V * 4)  # one chunk of positions (evaluation.blocks)
    head_part = head + LOGIT_COPIES * logits + eval_batch * S * d * c
    estimates = {"load model": dense,
                 "calibration": dense + layers_part,
                 "slice": dense + pruned,
                 "evaluation": dense + pruned + max(layers_part, head_part),
                 "export": dense + pruned + P_l * held + EXPORT_CHUNK}
    return {k: v for k, v in estimates.items() if k in COMMAND_STAGES[command]}


def _database_bytes(shape: ModelShape, cfg: RunConfig, c: int, converted: bool, stored: int, forward: int) -> int:
    """The database stage's own tensors at its largest layer (obs/database.py), the largest of three moments.

    While the layer runs on the calibration batches: the layer in c, one batch's activations (`forward`) and each
    module's Hessian sums (n² in the solver's dtype b(n)). While the attention, then the MLP is solved: the
    solved projection in c; its Hessian, Cholesky factor, triangular inverse, a contiguous copy of the factor's
    trailing block and the inverse (5·n²·b(n)) while it is inverted, then the Hessian, the inverse and the compensated weights of every level (Σ of kept widths ≈
    n·levels/2, d rows, in b(n)); the MLP's sums waiting, or the attention's levels done (in `stored` bytes).
    All with the calibration tokens' hidden states entering and leaving the layer.
    """
    d, half = shape.hidden_size, cfg.database.num_levels / 2
    T_c = cfg.data.calibration_blocks * cfg.data.seq_len
    biggest = 0
    for layer in shape.layers:
        q, I = layer.num_heads * shape.head_dim, layer.intermediate_size
        running = (layer_params(shape, layer) * c if converted else 0) + forward + sum(
            n * n * hessian_element_bytes(n) for n in (q, I))

        def solving(n: int) -> float:
            b = hessian_element_bytes(n)
            return (d * n * c if converted else 0) + max(5 * n * n * b, 2 * n * n * b + d * n * half * b)

        attention = solving(q) + I * I * hessian_element_bytes(I)
        mlp = solving(I) + d * q * half * stored
        biggest = max(biggest, running, attention, mlp)
    return int(biggest + 2 * T_c * d * c)


def format_gib(n: float) -> str:
    """`n` bytes as GiB with three significant figures, e.g. "41.2 GiB", "0.001 GiB", "128 GiB"."""
    g = n / GIB
    return f"{g:.0f} GiB" if g >= 100 else f"{g:.3g} GiB"


def estimate_table(estimates: dict[str, int]) -> str:
    """The estimates as a markdown table: stage | estimated GiB."""
    rows = [f"| {stage} | {n / GIB:.2f} |" for stage, n in estimates.items()]
    return "\n".join(["| stage | estimated GiB |", "|---|---:|", *rows])


def check_memory_budget(shape: ModelShape, cfg: RunConfig, device: str, stored_bytes: int, compute_bytes: int,
                        budget_bytes: int, phase: str) -> dict[str, int]:
    """Refuse a run one of whose stages needs more memory than `budget_bytes` by the estimate.

    Args:
        phase: "darwin" (every stage), "database" (the database only) or "search" (all but the database).

    Returns:
        The estimates of the stages `phase` runs.

    Raises:
        UserError: naming the first such stage in pipeline order, its estimate and the budget.
    """
    estimates = estimate_stages(shape, cfg, device, stored_bytes, compute_bytes)
    estimates = {k: v for k, v in estimates.items() if k in PHASE_STAGES[phase]}
    for stage, need in estimates.items():
        if need > budget_bytes:
            where = " (with the dense weights on the GPU)" if device.startswith("cuda") else ""
            fix = f"{STAGES[stage]}, or raise the budget" if STAGES[stage] else "raise the budget"
            raise UserError(f"the {stage} stage of evoprune {phase} needs about {format_gib(need)}{where} by "
                            f"evoprune's estimate (docs/memory.md), more than --max-memory {format_gib(budget_bytes)}; "
                            f"{fix}")
    return estimates
