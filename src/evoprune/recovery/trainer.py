"""`evoprune train`: continued training of a pruned checkpoint, distilled from the dense model.

Built on the trainer core (`build_optimizer`, `build_scheduler`, `plan_tokens`, `train_step`) and
Accelerate: the same code runs as one process or under `torchrun` / `accelerate launch` (DDP over
gloo on CPU, NCCL on GPUs, FSDP on GPUs). The run directory holds `checkpoints/` (resumable),
`metrics.jsonl`, `unseen_start.json` (perplexity on unseen text where the curves start), and when done
`model/`, `metrics.json`, `config.yaml`, `report.md` + `loss.png` (+ `unseen.png`).
The main process holds the run's lock (`rundir.run_lock`) throughout, and nothing is written to
`--out` before every check has passed and the checkpoint to resume from is loaded.
With train.teacher_source=cached the teacher runs once over the train blocks the budget reaches
(into the user cache, see `training.cached_teacher`) and is then dropped from memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import memory
from ..arch.export import export_checkpoint
from ..arch.spec import SubnetSpec
from ..atomic import write_json, write_text
from ..config import dump_config
from ..errors import UserError
from ..evaluation.perplexity import mean_nll
from ..evaluation.unseen import load_unseen
from ..memory import watched
from ..memory_plan import choose_bounded
from ..modes import eval_mode, train_mode
from ..models import LoadedModel
from ..data import data_blocks
from ..models import load_source
from ..rundir import ResumableRun, check_writable_out, run_lock
from ..training.batches import micro_batches, per_process_batch
from ..training.cached_teacher import CachedTeacher
from ..training.loop import plan_tokens
from ..training.optim import build_optimizer, build_scheduler
from ..training.step import train_step
from .accelerator import make_accelerator
from .checkpoint import Position, latest_checkpoint, load_checkpoint, read_trainer_state, save_checkpoint
from .config import RecoveryRunConfig, run_identity
from .lora import add_lora, check_lora_targets, merge_lora
from .metrics_log import MetricsLog
from .report import write_train_report
from .unseen import keep_start_figures, measure_unseen_figures

log = logging.getLogger(__name__)

RUN_FILE = "train_run.json"
DONE_FILE = "report.md"  # written last: a run killed before it (even after exporting model/) resumes


def check_same_vocabulary(student: LoadedModel, teacher: LoadedModel) -> None:
    """Distillation compares distributions token by token: tokenizers and vocabularies must be identical."""
    s_vocab, t_vocab = student.model.config.vocab_size, teacher.model.config.vocab_size
    if s_vocab != t_vocab:
        raise UserError(f"teacher {teacher.name} has a vocabulary of {t_vocab} but the student {student.name} "
                        f"{s_vocab}; distillation needs the same tokenizer and vocabulary")
    if student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise UserError(f"teacher {teacher.name} and student {student.name} have different tokenizers; "
                        "distillation needs the same tokenizer and vocabulary")


def _resumes(run_dir: ResumableRun, identity: dict, force: bool) -> bool:
    """True when `out` holds this run, unfinished; a finished one is refused (training it again needs --force)."""
    holds = run_dir.holds_run(identity, force)
    if holds and (run_dir.out / DONE_FILE).exists():
        raise UserError(f"{run_dir.out} holds a finished training run; pass --force to train again")
    return holds


def _check_resume_point(checkpoint: Path, identity: dict, steps: int) -> None:
    """Refuse a checkpoint of another run, or one with nothing left to train."""
    step = int(read_trainer_state(checkpoint, identity)["step"])
    if step >= steps:
        raise UserError(f"checkpoint {checkpoint} is at step {step}, the end of this run's {steps} steps: nothing "
                        "is left to train; resume from an earlier checkpoint, or drop --resume-from")


def _reduce_mean(accelerator, values: list[float | None]) -> list[float | None]:
    t = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return [None if math.isnan(v) else float(v) for v in t.tolist()]


@watched
def recover(cfg: RecoveryRunConfig, out: str | Path, force: bool = False, progress: bool = True,
            resume_from: str | Path | None = None, stop_after_steps: int | None = None,
            command: str = "evoprune train") -> Path:
    """Train `cfg.model.source` for `cfg.train.tokens` tokens; write the run directory `out`.

    Rerunning on the same `out` resumes from its latest checkpoint; `resume_from` names a checkpoint
    folder explicitly (refused when it belongs to a run with other settings). The main process
    holds the run's lock throughout; `out` is created (or, with `force`, replaced) only once every
    check has passed and the checkpoint to resume from is loaded.
    `stop_after_steps` ends this call after that many steps (tests use it to simulate a kill).
    """
    t = cfg.train
    out = check_writable_out(out)
    accelerator = make_accelerator(t, cfg.model.device)
    per_process_batch(t.batch_size, accelerator.num_processes)
    step_tokens = t.batch_size * t.grad_accum * cfg.data.seq_len
    if t.tokens < step_tokens:
        raise UserError(f"token budget {t.tokens} is smaller than one optimizer step of {step_tokens} tokens "
                        f"(batch_size {t.batch_size} x grad_accum {t.grad_accum} x seq_len {cfg.data.seq_len})")
    resume_path = Path(resume_from) if resume_from is not None else None
    if resume_path is not None and not resume_path.is_dir():
        raise UserError(f"checkpoint to resume from not found: {resume_path}")
    with run_lock(out, command) if accelerator.is_main_process else contextlib.nullcontext():
        return _train(cfg, out, accelerator, force, progress, resume_path, stop_after_steps, command)


def _train(cfg: RecoveryRunConfig, out: Path, accelerator, force: bool, progress: bool, resume_path: Path | None,
           stop_after_steps: int | None, command: str) -> Path:
    t = cfg.train
    identity = run_identity(cfg)
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    tcfg = t.train_config(cfg.seed)
    run_dir = ResumableRun(out, "train", RUN_FILE)
    holds_this_run = _resumes(run_dir, identity, force)
    # the student trains, so it is held whole; the teacher only gives logits: mapped when the budget asks, or
    # whenever it only runs once into a cache (checked before any weight is read)
    cached_only = t.teacher_source == "cached" and tcfg.uses_teacher
    teacher_bounded = choose_bounded(cfg, "train", teacher=t.teacher, prefer=cached_only)
    with memory.stage("load model"):
        student = load_source(cfg)
        teacher = load_source(cfg, t.teacher, bounded=teacher_bounded) if t.teacher else None
    notes = []
    if teacher is not None:
        check_same_vocabulary(student, teacher)
        if t.hidden_weight > 0 and student.model.config.hidden_size != teacher.model.config.hidden_size:
            notes.append(f"hidden-state loss skipped: the student's hidden size {student.model.config.hidden_size} "
                         f"differs from the teacher's {teacher.model.config.hidden_size}")
            log.warning(notes[-1])
            tcfg.hidden_weight = 0.0
    if t.lora:
        check_lora_targets(student.model, t.lora_targets)
    train_blocks = data_blocks(cfg, student.tokenizer, "train", t.train_blocks)
    eval_blocks = data_blocks(cfg, student.tokenizer, "eval", cfg.data.eval_blocks)
    unseen = load_unseen(cfg, student.tokenizer) if is_main else None  # only the main process measures them
    plan = plan_tokens(t.tokens, cfg.data.seq_len, tcfg)
    if resume_path is not None:
        _check_resume_point(resume_path, identity, plan.steps)

    torch.manual_seed(cfg.seed)
    model = student.model
    if t.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise UserError(f"{student.name} does not support gradient checkpointing; set "
                            "train.gradient_checkpointing=false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.lora:
        model = add_lora(model, t.lora_targets, t.lora_r, t.lora_alpha, t.lora_dropout)
    model = accelerator.prepare(model)
    optimizer = accelerator.prepare(build_optimizer(model, tcfg))
    scheduler = build_scheduler(optimizer.optimizer, tcfg, plan.steps)
    teacher_model, teacher_kind = None, "online" if tcfg.uses_teacher else None
    if teacher is not None and t.teacher_source == "cached" and tcfg.uses_teacher:
        reached = train_blocks[:min(len(train_blocks), plan.micro_batches * t.batch_size)]  # blocks used, in order
        tick = time.perf_counter()
        # the main process builds the cache, the others then read it
        with accelerator.main_process_first(), memory.stage("teacher cache"):
            teacher_model = CachedTeacher.for_blocks(teacher, reached, t.teacher_top_k, tcfg.kd_temperature,
                                                     cfg.data.batch_size, progress and is_main)
        cache = teacher_model.cache
        teacher_kind = "cached " + ("full" if cache.top_k is None else f"top-{cache.top_k}")
        notes.append(f"teacher read from {cache.path} ({len(reached)} blocks, "
                     f"{'full log-probs' if cache.top_k is None else f'top-{cache.top_k} + rest mass'} at "
                     f"temperature {cache.temperature:g}, {cache.path.stat().st_size / 2**20:.1f} MB, ready in "
                     f"{time.perf_counter() - tick:.1f} s)")
        teacher = None  # not needed in memory any more
    elif teacher is not None:
        teacher_model = teacher.model.to(accelerator.device).requires_grad_(False)

    position = Position()
    checkpoints = out / "checkpoints"
    source = resume_path or (latest_checkpoint(checkpoints) if holds_this_run else None)
    if source is not None:
        position = load_checkpoint(accelerator, source, identity)
        scheduler.load_state_dict(position.scheduler)
        log.info("resumed from %s at step %d (%d tokens)", source, position.step, position.tokens_seen)
    accelerator.wait_for_everyone()  # every process has read `out` (and its checkpoint) before the main one changes it
    if is_main:
        run_dir.start(identity, force)
    accelerator.wait_for_everyone()
    metrics = MetricsLog(out / "metrics.jsonl", is_main)
    metrics.truncate_after(position.step if source is not None else -1)
    if source is None or not holds_this_run:  # a new curve: it starts with the held-out loss where training starts
        with memory.stage("evaluation"):
            loss = mean_nll(model, eval_blocks, cfg.data.batch_size)
            metrics.write({"step": position.step, "tokens": position.tokens_seen, "eval_loss": loss,
                           "eval_ppl": math.exp(loss)})
            if is_main:
                keep_start_figures(out, accelerator.unwrap_model(model), unseen, cfg.data.batch_size, progress)
    if source is not None and not holds_this_run:
        notes.append(f"resumed from {source} at step {position.step}: the curves start there")

    started = time.perf_counter()
    steps_here = tokens_here = 0
    with ExitStack() as stack:
        stack.enter_context(memory.stage("training"))
        stack.enter_context(train_mode(model))
        if isinstance(teacher_model, torch.nn.Module):
            stack.enter_context(eval_mode(teacher_model))
        bar = stack.enter_context(tqdm(total=plan.tokens, initial=position.tokens_seen, unit="tok", unit_scale=True,
                                       desc="train", disable=not (progress and is_main)))
        while position.step < plan.steps:
            count = plan.micro_batches_in_step(position.step)
            micro, cursor = micro_batches(train_blocks, position.cursor, t.batch_size, count, rank, world)
            tick = time.perf_counter()
            result = train_step(model, micro, optimizer, tcfg, scheduler, teacher_model, accelerator=accelerator)
            loss, lm, kd, hidden = _reduce_mean(accelerator, [result.loss, result.lm, result.kd, result.hidden])
            seconds = time.perf_counter() - tick
            tokens = count * plan.micro_tokens
            position = Position(position.step + 1, position.tokens_seen + tokens, cursor, scheduler.state_dict())
            steps_here, tokens_here = steps_here + 1, tokens_here + tokens
            record = {"step": position.step, "tokens": position.tokens_seen, "loss": loss, "lm": lm, "kd": kd,
                      "hidden": hidden, "lr": result.lr, "grad_norm": result.grad_norm,
                      "tokens_per_s": round(tokens / seconds, 1)}
            last = position.step == plan.steps
            if last or (t.eval_every and position.step % t.eval_every == 0):
                record["eval_loss"] = mean_nll(model, eval_blocks, cfg.data.batch_size)
                record["eval_ppl"] = math.exp(record["eval_loss"])
            metrics.write({k: v for k, v in record.items() if v is not None})
            bar.update(tokens)
            bar.set_postfix(loss=f"{loss:.4f}", **({"eval_ppl": f"{record['eval_ppl']:.4g}"} if "eval_ppl" in record
                                                   else {}))
            if last or (t.checkpoint_every and position.step % t.checkpoint_every == 0):
                save_checkpoint(accelerator, checkpoints, position, identity, t.keep_checkpoints)
            if stop_after_steps is not None and steps_here >= stop_after_steps and not last:
                return out
    seconds = time.perf_counter() - started

    model = merge_lora(accelerator.unwrap_model(model)) if t.lora else accelerator.unwrap_model(model)
    if is_main:
        records = metrics.records()
        evals = [r for r in records if "eval_loss" in r]
        with memory.stage("evaluation"):
            figures = None if unseen is None else measure_unseen_figures(out, model, unseen, cfg.data.batch_size,
                                                                         notes, progress)
        summary = {"steps": position.step, "tokens": position.tokens_seen, "processes": world,
                   "start_eval_ppl": evals[0]["eval_ppl"], "final_eval_ppl": evals[-1]["eval_ppl"],
                   **(figures.summary() if figures else {}),
                   "final_train_loss": records[-1].get("loss"),
                   "tokens_per_s": round(tokens_here / seconds, 1) if seconds > 0 else None,
                   "mode": "lora" if t.lora else "full", "loss": tcfg.loss,
                   "teacher": teacher_kind}
        spec_file = student.path / "evoprune_spec.json"
        spec = SubnetSpec.load(spec_file) if spec_file.is_file() else None
        with memory.stage("export"):
            model.to("cpu")
            export_checkpoint(model, out / "model", tokenizer=student.tokenizer, spec=spec, force=True)
        usage = memory.summary()
        write_json(out / "metrics.json", {**summary, **(figures.metrics() if figures else {}), "history": evals,
                                          "memory": {**usage, "teacher_bounded": teacher_bounded}})
        write_text(out / "config.yaml", dump_config(cfg))
        write_train_report(out, f"evoprune train: {student.name}", summary, records, notes, command, figures, usage)
        log.info("wrote %s", out)
    accelerator.wait_for_everyone()
    return out
