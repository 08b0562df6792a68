"""Which path a command takes under its memory budget: prune, slice and database (the dense model), eval (the model
and its teacher), train (the teacher only: the student trains, so it is held whole).

`--max-memory GIB` bounds the peak anonymous memory of the whole process. Before any weight is read, each
stage's estimate (`memory_estimate.estimate_command`) is added to what the process holds already (Python,
torch, the config: measured at the check) for both paths: the dense model copied into `model.dtype`, or
kept memory-mapped as stored and run one converted module at a time (`models.load_model(bounded=True)`,
the same numbers). The copy is kept when it fits the budget, the bounded path is taken when only it
fits, and the run is refused in one line when neither does. Without a budget the copy is kept unless it
would take more than half of MemAvailable (as `eval.streamed=auto` decides). A checkpoint whose stored dtype does
not widen exactly to `model.dtype` is copied on both paths.
"""

from __future__ import annotations

import logging

from .arch.params import total_params
from .config import RunConfig
from .errors import UserError
from .memory import AUTO_FRACTION, current_memory, mem_available
from .memory_estimate import GIB, HeldModel, estimate_command, estimate_eval, estimate_train, format_gib
from .models import DTYPES, resolve_compute_dtype, resolve_model_path, source_shape, widens_exactly
from .weights.mapped import stored_dtype

log = logging.getLogger(__name__)

FIXES = {"load model": "pass --dtype bfloat16 to keep a bf16 checkpoint as stored",
         "calibration": "lower data.batch_size or data.seq_len",
         "slice": "raise --sparsity",
         "evaluation": "lower data.batch_size or data.seq_len",
         "export": "raise --sparsity",
         "database": "lower data.calibration_blocks or data.seq_len",
         "teacher cache": "lower data.batch_size or data.seq_len",
         "training": "lower train.batch_size or data.seq_len, set train.gradient_checkpointing=true or train.lora=true"}


def plan_estimates(cfg: RunConfig, command: str, model: str | None = None,
                   teacher: str | None = None) -> tuple[bool, dict[str, int], dict[str, int] | None]:
    """(whether the bounded path is possible, estimates of the copied path, of the bounded one or None).

    A checkpoint stored in the asked dtype is mapped on both paths: its copied estimate has no copy either.

    Args:
        model, teacher: eval and train: the model (default `cfg.model.source`) and the teacher, if any.
    """
    if command in ("eval", "train"):
        return _two_model_estimates(cfg, command, model or cfg.model.source, teacher)
    m = cfg.model
    path = resolve_model_path(m.source)
    shape = source_shape(m.source, m.trust_remote_code)
    asked = DTYPES[m.dtype]
    stored = stored_dtype(path) or asked
    compute = resolve_compute_dtype(m.compute_dtype, asked, str(m.device)).itemsize
    same = stored == asked and not m.device.startswith("cuda")
    copied = estimate_command(command, shape, cfg, stored.itemsize, asked.itemsize, compute, bounded=same)
    if not widens_exactly(stored, asked):
        return False, copied, None
    return True, copied, estimate_command(command, shape, cfg, stored.itemsize, asked.itemsize, compute, True)


def choose_bounded(cfg: RunConfig, command: str, model: str | None = None, teacher: str | None = None,
                   prefer: bool = False) -> bool:
    """Whether `command` loads the dense model bounded (see the module docstring); refuses a run that fits no path.

    Args:
        model, teacher: as in `plan_estimates` (eval: both are bounded or neither; train: the teacher only).
        prefer: `model.bounded=auto` means bounded whenever possible (a teacher only run once, into a cache).

    Raises:
        UserError: when even the bounded path's largest stage, with what the process holds already, exceeds
            `cfg.max_memory_gib`.
    """
    possible, copied, bounded = plan_estimates(cfg, command, model, teacher)
    setting = True if prefer and cfg.model.bounded == "auto" else cfg.model.bounded
    if setting is not True and setting is not False:
        return _by_budget(cfg, command, possible, copied, bounded)
    chosen = setting and possible
    if cfg.max_memory_gib is not None:
        _check(cfg, command, bounded if chosen else copied)
    return chosen


def _by_budget(cfg: RunConfig, command: str, possible: bool, copied: dict[str, int],
               bounded: dict[str, int] | None) -> bool:
    if cfg.max_memory_gib is None:
        available = mem_available()
        choose = possible and available is not None and max(copied.values()) > AUTO_FRACTION * available
        if choose:
            log.info("dense model kept mapped as stored: a copy would need %s of %s available",
                     format_gib(max(copied.values())), format_gib(available))
        return choose
    budget = int(cfg.max_memory_gib * GIB)
    held = current_memory()["anon_bytes"] or 0
    if max(copied.values()) + held <= budget:
        return False
    if bounded is not None and max(bounded.values()) + held <= budget:
        log.info("dense model kept mapped as stored (--max-memory %s)", format_gib(budget))
        return True
    _check(cfg, command, bounded or copied)
    return False


def _check(cfg: RunConfig, command: str, estimates: dict[str, int]) -> None:
    """Refuse when the largest stage of `estimates`, with what the process holds already, exceeds the budget."""
    budget = int(cfg.max_memory_gib * GIB)
    held = current_memory()["anon_bytes"] or 0
    stage = max(estimates, key=estimates.get)
    if estimates[stage] + held <= budget:
        return
    raise UserError(f"the {stage} stage of evoprune {command} needs about {format_gib(estimates[stage])} by evoprune's "
                    f"estimate (docs/memory.md), plus {format_gib(held)} this process holds already, more than "
                    f"--max-memory {format_gib(budget)}; {FIXES[stage]}, or raise the budget")


def _two_model_estimates(cfg, command: str, model: str,
                         teacher: str | None) -> tuple[bool, dict[str, int], dict[str, int] | None]:
    """`plan_estimates` of eval (the model and the teacher bounded alike) and train (the teacher alone bounded);
    `cfg` is a RunConfig (eval) or a `recovery.config.RecoveryRunConfig` (train)."""
    m = cfg.model
    asked = DTYPES[m.dtype]
    compute = resolve_compute_dtype(m.compute_dtype, asked, str(m.device)).itemsize

    def held(source: str, bounded: bool) -> tuple[HeldModel, bool]:
        stored = stored_dtype(resolve_model_path(source)) or asked
        shape = source_shape(source, m.trust_remote_code)
        same = stored == asked and not m.device.startswith("cuda")
        widens = widens_exactly(stored, asked)
        kept = same or (bounded and widens)
        return HeldModel(shape, (stored if kept else asked).itemsize, kept), widens

    if command == "train":
        student = held(model, False)[0]
        if teacher is None:
            return False, estimate_train(student, None, cfg, compute), None
        copied, possible = held(teacher, False)
        estimates = estimate_train(student, copied, cfg, compute)
        return possible, estimates, estimate_train(student, held(teacher, True)[0], cfg, compute) if possible else None
    sources = {"model": model, **({"teacher": teacher} if teacher else {})}
    copies = {name: held(source, False) for name, source in sources.items()}
    possible = any(widens for _, widens in copies.values())
    streamed = _streams(cfg, [h for h, _ in copies.values()])
    copied = estimate_eval({name: h for name, (h, _) in copies.items()}, cfg, compute, streamed)
    if not possible:
        return False, copied, None
    kept = {name: held(source, True)[0] for name, source in sources.items()}
    return True, copied, estimate_eval(kept, cfg, compute, _streams(cfg, list(kept.values())))


def _streams(cfg: RunConfig, models: list[HeldModel]) -> bool:
    """Whether `eval.streamed` will evaluate one of `models` layer by layer (`streamed_choice.use_streamed`)."""
    setting = cfg.eval.streamed
    if setting != "auto":
        return bool(setting)
    available = mem_available()
    weights = max(total_params(h.shape) * h.element_bytes for h in models)
    return available is not None and weights > AUTO_FRACTION * available
