"""The `prune` (uniform, depth baselines) and `slice` commands as library functions: config in, run directory out.

A run directory always has the same layout: `model/` (exported checkpoint), `spec.json`,
`metrics.json`, `config.yaml` (resolved), `report.md` and its PNG plots. It is built under a
temporary name and renamed when complete, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .. import memory
from ..arch import params
from ..arch.streamed_export import export_sliced
from ..arch.spec import SubnetSpec
from ..atomic import check_output_dir, staged_dir, write_json, write_text
from ..config import RunConfig, dump_config
from ..data import data_blocks
from ..evaluation.mapped_latency import latency_for_mapped
from ..evaluation.suite import METRIC_COLUMNS, evaluate_models, teacher_for
from ..evaluation.unseen import describe_unseen, load_unseen
from ..evaluation.unseen_report import unseen_section
from ..memory import memory_section, watched
from ..memory_plan import choose_bounded
from ..models import LoadedModel, load_source
from ..obs.calibration import collect_stats
from .depth import depth_spec
from ..arch.target import resolve_target
from .uniform import uniform_spec
from ..report import markdown_table, plot_bars, plot_kept_per_layer, write_report
from ..rundir import holding_run_lock
from ..serving.deploy import export_for_serving, serving_line, serving_record
from ..weights.compute_dtype import LOADED_AS, inference_slice

log = logging.getLogger(__name__)



def make_spec(cfg: RunConfig, dense: LoadedModel, progress: bool = True) -> SubnetSpec:
    """Calibrate and choose what to keep with the configured baseline method."""
    shape = dense.adapter.shape(dense.model)
    size = cfg.prune.one_size("prune")
    target = resolve_target(shape, size.sparsity, size.target_params)
    calib = data_blocks(cfg, dense.tokenizer, "calibration", cfg.data.calibration_blocks)
    stats = collect_stats(dense.model, dense.adapter, calib, cfg.data.batch_size, progress)
    if cfg.prune.method == "depth":
        spec = depth_spec(shape, stats.block_influence(), target)
    else:
        spec = uniform_spec(shape, stats.head_energy(dense.adapter, dense.model),
                            stats.neuron_energy(dense.adapter, dense.model), target, cfg.prune.multiple)
    report = target.report(spec.block_params(), params.block_params(shape))
    if abs(report["relative_error"]) > 0.01:
        log.warning("%s: achieved block sparsity %.4f, %.2f%% of the block parameters away from the target "
                    "(the units are too coarse to get closer)", target.description, report["achieved_sparsity"],
                    100 * abs(report["relative_error"]))
    spec.meta.update(source=dense.name, calibration=f"{cfg.data.source}: {len(calib)} x {cfg.data.seq_len} tokens",
                     target_report=report)
    return spec


@holding_run_lock
@watched
def prune(cfg: RunConfig, out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Prune `cfg.model.source` with `cfg.prune`, export it, evaluate dense vs pruned, write a report."""
    check_output_dir(out, force)
    torch.manual_seed(cfg.seed)
    started = time.time()
    with memory.stage("load model"):
        dense = load_source(cfg, bounded=choose_bounded(cfg, "prune"))
    with memory.stage("calibration"):
        spec = make_spec(cfg, dense, progress)
    return _finish(cfg, dense, spec, Path(out), force, progress, started)


@holding_run_lock
@watched
def slice_with_spec(cfg: RunConfig, spec_path: str | Path, out: str | Path, force: bool = False,
                    progress: bool = True) -> Path:
    """Cut `cfg.model.source` down to a saved SubnetSpec, export and evaluate it."""
    check_output_dir(out, force)
    spec = SubnetSpec.load(spec_path)
    with memory.stage("load model"):
        dense = load_source(cfg, bounded=choose_bounded(cfg, "slice"))
    spec.validate(dense.adapter.shape(dense.model))
    return _finish(cfg, dense, spec, Path(out), force, progress, time.time())


def _finish(cfg: RunConfig, dense: LoadedModel, spec: SubnetSpec, out: Path, force: bool, progress: bool,
            started: float) -> Path:
    with memory.stage("slice"):
        pruned = inference_slice(dense.model, dense.adapter, spec, {})
    with memory.stage("evaluation"):
        eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
        teacher = teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, cfg.data.batch_size, progress)
        unseen = load_unseen(cfg, dense.tokenizer)
        eval_cfg, latency_skipped = latency_for_mapped(cfg.eval, {"dense": dense.model})
        rows = evaluate_models({"dense": dense.model, "pruned": pruned}, eval_blocks, teacher, eval_cfg,
                               cfg.data.batch_size, progress, unseen=unseen, unchanged=frozenset({"dense"}))
    metrics = {"dense": rows["dense"], "pruned": rows["pruned"], "target": spec.meta.get("target_report"),
               "eval_tokens": int(eval_blocks.numel()), "wall_time_s": round(time.time() - started, 1)}
    if latency_skipped is not None:
        metrics["latency_skipped"] = latency_skipped
    if unseen is not None:
        metrics["unseen_text"] = describe_unseen(unseen)
    with staged_dir(out, force=force) as tmp:
        with memory.stage("export"):
            export_sliced(dense.model, dense.adapter, spec, {}, tmp / "model", tokenizer=dense.tokenizer)
            spec.save(tmp / "spec.json")
            served = export_for_serving(tmp / "model", cfg.export.format, cfg.export.quant)
            if served is not None:
                metrics["serving"] = serving_record(served, tmp, cfg.export.format, cfg.export.quant)
        metrics["memory"] = {**memory.summary(), "bounded": getattr(dense.model, LOADED_AS, None) is not None}
        write_json(tmp / "metrics.json", metrics)
        write_text(tmp / "config.yaml", dump_config(cfg))
        _prune_report(tmp, cfg, spec, rows, metrics, unseen)
    log.info("wrote %s", out)
    return out


def _prune_report(folder: Path, cfg: RunConfig, spec: SubnetSpec, rows: dict, metrics: dict,
                  unseen: list | None) -> None:
    plot_kept_per_layer(spec, folder / "kept_per_layer.png")
    plot_bars({k: r["perplexity"] for k, r in rows.items()}, "held-out perplexity", "perplexity (log scale)",
              folder / "perplexity.png", log=True)
    sections = [("Result", markdown_table(list(rows.values()), [c for c in METRIC_COLUMNS if c in rows["dense"]])
                 + "\n![perplexity](perplexity.png)\n")]
    if unseen is not None:
        sections.append(("Unseen text", unseen_section(rows, unseen, folder / "unseen.png")))
    if "latency_skipped" in metrics:
        sections.append(("Latency", metrics["latency_skipped"][0].upper() + metrics["latency_skipped"][1:] + "."))
    target = metrics["target"]
    if target:
        sections.append(("Target", markdown_table([target])))
    summary = spec.summary()
    sections.append(("What was kept", markdown_table([summary]) + "\n![kept per layer](kept_per_layer.png)\n"))
    sections.append(("Data", f"Calibration: {spec.meta.get('calibration', '?')}. Evaluation: {cfg.data.source}, "
                             f"held-out split, {metrics['eval_tokens']:,} tokens. Latency: batch {cfg.eval.batch_size}, "
                             f"prompt {cfg.eval.prompt_len}, {cfg.eval.new_tokens} decode steps, median of "
                             f"{cfg.eval.repeats}."))
    sections.append(("Memory", memory_section(metrics["memory"])))
    sections.append(("Reproduce", "```\nevoprune prune --config config.yaml --out <dir>\n```\n"
                                  "Load the result with `AutoModelForCausalLM.from_pretrained('model', "
                                  "trust_remote_code=True)` (plain stock loading when the result is uniform)."
                                  + (f"\n\n{serving_line(metrics['serving'])}" if "serving" in metrics else "")))
    write_report(folder / "report.md", f"evoprune {spec.meta.get('method', 'prune')}: {spec.meta.get('source', '')}",
                 sections)
