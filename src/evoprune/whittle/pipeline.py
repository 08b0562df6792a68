"""`evoprune nas`: the search space (the database's levels, or importance sorting -> optional supernet training)
-> multi-objective search -> Pareto front -> picks.

Run directory: `nas_run.json` (the settings, `run_settings`), `study.db` (optuna, resumable), `database`
(with nas.weights database: a link to the shared store, as darwin's), `latency.json`, `pareto.csv` /
`pareto.json`, `front.png`, `report.md`, `replace_one.json` (with `--start mip`: the scores the MIP start was
assembled from), and `picks/<name>/` exported checkpoints. One process writes it at
a time (`rundir.run_lock`). Rerunning the same command resumes the study (with larger --trials, extends it);
a changed setting is refused; `--force` starts over.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import random
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from .. import memory
from ..arch.streamed_export import export_sliced
from ..arch.shape import ModelShape
from ..arch.target import sparsity_at_total
from ..atomic import staged_file, write_json, write_text
from ..config import RunConfig
from ..errors import UserError
from ..evaluation.suite import evaluate_models, teacher_for
from ..evaluation.unseen import describe_unseen, load_unseen
from ..evaluation.unseen_report import unseen_section
from ..memory import memory_section, watched
from ..models import LoadedModel
from ..data import data_blocks
from ..models import load_source, source_shape
from ..obs.calibration import CalibrationStats, collect_stats
from ..obs.run_database import build_database, database_settings
from ..report import markdown_table, write_report
from ..rundir import ResumableRun, run_lock
from ..serving.deploy import check_format_before_work, export_for_serving, serving_line, serving_record
from ..arch.nemotron_format import check_space_fits
from .supernet.train import SupernetConfig, train_supernet
from .arguments import (DEFAULT_SAMPLER, DEFAULT_WEIGHTS, FULL_SPACE, NasArguments, PickRule, check_arguments,
                        params_bounds, pick_rule, quality_objective, range_text)
from .importance import check_sortable, importance_from_stats, permute_model
from .level_space import LevelSpace
from .mip_start import mip_start
from .objectives import make_objectives
from .pareto import hypervolume, pareto_front
from .pick import choose_pick
from .run_settings import MARKER, fingerprints, run_settings, saved_form
from .space import SearchSpace
from .study import open_study, run_study

log = logging.getLogger(__name__)


def sorted_space(dense: LoadedModel, stats: CalibrationStats, multiple: int = 1,
                 per_layer: bool = False, space: str = "full") -> SearchSpace:
    """Sort `dense.model` in place by importance (function-preserving) and return the search space over it."""
    imp = importance_from_stats(stats, dense.adapter, dense.model)
    permute_model(dense.model, dense.adapter, imp)
    return SearchSpace(dense.adapter.shape(dense.model), tuple(imp.layer_rank), per_layer=per_layer,
                       multiple=multiple, space=space)


def supernet_step(cfg: RunConfig, dense: LoadedModel, space: SearchSpace, steps: int, folder: Path,
                  progress: bool = True, feasible=None) -> None:
    """Weight-sharing training of `dense.model` (sorted) on `steps` training blocks; resumes from `folder`.

    With `feasible`, the random sub-networks are drawn among the configurations it accepts (the
    ones the search will visit); the sandwich's smallest is then the smallest of those found.
    """
    train = data_blocks(cfg, dense.tokenizer, "train", max(1, steps))
    smallest = space.to_spec(space.smallest())
    if feasible is not None and not feasible(space.smallest()):
        rng = random.Random(cfg.seed)
        smallest = min((space.sample_spec(rng, feasible) for _ in range(200)), key=lambda spec: spec.num_params())
    train_supernet(dense.model, dense.adapter, train, lambda rng: space.sample_spec(rng, feasible), smallest,
                   SupernetConfig(steps=steps, seed=cfg.seed), folder, progress)


def trial_rows(study: optuna.Study, objectives: list[str]) -> list[dict]:
    """One row per completed trial, in order: its index among them, objective values and configuration.

    The index, not optuna's trial number: a draw cut short by a kill stays in the study as a failed
    trial with a number of its own, so a resumed study numbers the same evaluations differently.
    """
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [{"trial": i, **dict(zip(objectives, t.values)), **t.params}
            for i, t in enumerate(sorted(completed, key=lambda t: t.number))]


@watched
def run(cfg: RunConfig, out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Search, or resume the search in `out`, and write the front and the pick.

    The search is `cfg.nas` (objectives, trials, sampler, pick, supernet_steps, sparsity_range); the
    pick's size target is prune.sparsity / prune.target_params (`arguments`). Every argument is checked
    before `out` is touched or the model loaded (the size target and the range against the dense shape,
    read from its config); a changed setting of a run in `out` is refused before the model loads (its
    weights and text once they are read). With `force`, an old run is removed only once everything is
    checked, under `out`'s lock.
    """
    args = check_arguments(cfg)
    check_format_before_work(cfg, searched=True)
    _size_checks(cfg, args, source_shape(cfg.model.source, cfg.model.trust_remote_code))
    objectives = list(args.objectives)
    with run_lock(out) as out:
        settings = run_settings(cfg, args)
        run_dir = ResumableRun(out, "nas", MARKER)
        run_dir.holds_run(settings, force, only_given=True)
        with memory.stage("load model"):
            dense = load_source(cfg)
        check_space_fits(cfg.search.space, dense.model.config)
        rule, bounds = _size_checks(cfg, args, dense.adapter.shape(dense.model))
        with memory.stage("calibration data"):
            calib = _calibration_blocks(cfg, dense)
            settings["fingerprints"] = fingerprints(dense, calib)
        run_dir.holds_run(settings, force, only_given=True)  # again, now with the fingerprints
        run_dir.start(saved_form(settings), force)
        study = open_study(out / "study.db", objectives, args.sampler, cfg.seed, settings["fingerprints"]["weights"])
        with memory.stage(f"{args.weights} and objectives"):
            space, evaluate = _prepare_search(cfg, dense, calib, objectives, out, progress)
        feasible = space.constraint(bounds, _range_flag(args))
        if args.supernet_steps:
            with memory.stage("supernet training"):
                supernet_step(cfg, dense, space, args.supernet_steps, out / "supernet", progress, feasible)
        start = [] if args.start == "mip" else space.starting_points(feasible)  # enqueued by a new study only
        if args.start == "mip" and not study.get_trials(deepcopy=False):  # (a resumed one scores nothing)
            with memory.stage("replace-one scores and MIP start"):
                start = _mip_configs(cfg, dense, space, calib, args, feasible, out, study, progress, rule)
        with memory.stage("search"):
            run_study(study, space, evaluate, args.trials, feasible=feasible, progress=progress, start=start)
        _write_results(cfg, dense, space, trial_rows(study, objectives), args, rule, bounds, out,
                       args.supernet_steps > 0, study.user_attrs.get("start"))
    return out


def _size_checks(cfg: RunConfig, args: NasArguments,
                 shape: ModelShape) -> tuple[PickRule, tuple[float, float] | None]:
    """The pick's rule and the searched range in fractions of the dense parameters, for a dense model of `shape`;
    a UserError for a target no searched sub-network can meet or a range none does (the shape alone decides)."""
    rule = pick_rule(args, shape, cfg.prune)
    bounds = params_bounds(shape, args.sparsity_range)
    if args.weights == "database":  # the levels the database will have (bad database settings refused here)
        space = LevelSpace.planned(shape, database_settings(cfg))
    else:
        check_sortable(shape)
        space = SearchSpace(shape, tuple(range(len(shape.layers))), multiple=cfg.prune.multiple, space=cfg.search.space)
    if bounds:
        space.params_range_check(*bounds, named=_range_flag(args))
    return rule, bounds


def _range_flag(args: NasArguments) -> str | None:
    """The searched range as the user gives it (None: the whole space)."""
    if args.sparsity_range is None:
        return None
    low, high = args.sparsity_range
    return f"--sparsity-range {low:g},{high:g}" + (" (the default)" if args.range_default else "")


def _calibration_blocks(cfg: RunConfig, dense: LoadedModel) -> torch.Tensor:
    """The importance statistics' blocks followed by the search's scoring blocks."""
    n_stats = cfg.data.calibration_blocks
    calib = data_blocks(cfg, dense.tokenizer, "calibration", n_stats + cfg.data.eval_blocks)
    if len(calib) <= n_stats:
        raise UserError(f"the calibration split has only {len(calib)} blocks of {cfg.data.seq_len} tokens, all taken "
                        "by the importance statistics; give more text or lower data.calibration_blocks")
    return calib


def _prepare_search(cfg: RunConfig, dense: LoadedModel, calib: torch.Tensor, objectives: list[str], out: Path,
                    progress: bool) -> tuple[SearchSpace | LevelSpace, Callable[[dict], list[float]]]:
    """The search space (the database's levels, or the model sorted by importance) and the objectives, scored on
    blocks the database / the importance did not see."""
    n_stats = cfg.data.calibration_blocks
    search_blocks = calib[n_stats:]
    teacher = teacher_for(dense.model, str(dense.path), search_blocks, cfg.eval, cfg.data.batch_size, progress) \
        if "kl" in objectives else None
    if cfg.nas.weights == "database":  # built on the same first calibration blocks as the importance statistics
        space = LevelSpace.of_database(build_database(cfg, dense, out / "database", progress))
    else:
        stats = collect_stats(dense.model, dense.adapter, calib[:n_stats], cfg.data.batch_size, progress)
        space = sorted_space(dense, stats, cfg.prune.multiple, space=cfg.search.space)
    evaluate = make_objectives(dense.model, dense.adapter, space, objectives, search_blocks, teacher,
                               out / "latency.json", cfg.data.batch_size,
                               {"prompt_len": cfg.eval.prompt_len, "new_tokens": cfg.eval.new_tokens,
                                "repeats": cfg.eval.repeats})
    return space, evaluate


def _mip_configs(cfg: RunConfig, dense: LoadedModel, space: LevelSpace, calib: torch.Tensor, args: NasArguments,
                 feasible: Callable[[dict], bool], out: Path, study: optuna.Study, progress: bool,
                 rule: PickRule) -> list[dict]:
    """The MIP assemblies a new study evaluates first (`mip_start`; the one at the pick's size, if any, before the
    others), recorded in the study's `start` attribute."""
    first = None if rule.max_params is None else sparsity_at_total(space.shape, rule.max_params)  # the pick's size
    if first is not None and not 0 < first < 1:  # (a target outside the blocks' reach: the pick takes the smallest)
        first = None
    search_blocks = calib[cfg.data.calibration_blocks:]
    teacher = teacher_for(dense.model, str(dense.path), search_blocks, cfg.eval, cfg.data.batch_size, progress)
    found = mip_start(dense, space, search_blocks, teacher, args.sparsity_range, args.mip_step,
                      cfg.search.replace_one_tokens, cfg.search.replace_one_all_levels, feasible, out,
                      cfg.data.batch_size, progress, first)
    study.set_user_attr("start", {"method": "mip", "sparsities": found.sparsities, "trials": len(found.configs),
                                  "replace_one_seconds": round(found.scores_seconds, 1),
                                  "replace_one_reused": found.scores_reused})
    return found.configs


def _evaluate_pick(cfg: RunConfig, dense: LoadedModel, picked, full_label: str, out: Path,
                   serving: dict | None = None) -> list[tuple[str, str]]:
    """metrics.json: the full model and the pick on the held-out split and on unseen text; report sections.

    `serving` (the pick's serving-format export, see `serving.deploy.serving_record`) is recorded too.
    """
    with memory.stage("evaluation"):
        eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
        unseen = load_unseen(cfg, dense.tokenizer)
        rows = evaluate_models({full_label: dense.model, "pick": picked}, eval_blocks, None,
                               dataclasses.replace(cfg.eval, latency=False), cfg.data.batch_size, progress=False,
                               unseen=unseen, unchanged=frozenset({full_label}))
    metrics = {"full": rows[full_label], "pick": rows["pick"], "eval_tokens": int(eval_blocks.numel()),
               "memory": memory.summary()}
    if unseen is not None:
        metrics["unseen_text"] = describe_unseen(unseen)
    if serving is not None:
        metrics["serving"] = serving
    write_json(out / "metrics.json", metrics)
    sections = [("Pick on held-out text", markdown_table(list(rows.values()),
                                                         ["model", "params", "block_params", "perplexity"]))]
    if unseen is not None:
        sections.append(("Unseen text", unseen_section(rows, unseen, out / "unseen.png")))
    sections.append(("Memory", memory_section(metrics["memory"])))
    return sections


def _search_section(space: SearchSpace | LevelSpace, args: NasArguments, bounds: tuple[float, float] | None,
                    trials: int, start: dict | None = None) -> str:
    """What was searched, and which of it is a default, for report.md (`start`: the study's MIP start record)."""
    sampler_note = " (the default)" if args.sampler == DEFAULT_SAMPLER else ""
    weights_note = " (the default)" if args.weights == DEFAULT_WEIGHTS else ""
    if isinstance(space, LevelSpace):
        weights = (f"Weights `database`{weights_note}: one level per module (attention and MLP of each of "
                   f"{space.shape.num_layers} layers) from the second-order database (`database/`), the kept weights "
                   f"updated by OBS; {_start_text(args, start)}.\n\n")
    else:
        weights = (f"Weights `importance`{weights_note}: first-k slices of the importance-sorted model (hidden size, "
                   "layers, heads, MLP width), weights unchanged.\n\n")
    if bounds is None:
        searched = "the whole space (`--sparsity-range full`)"
    else:
        searched = (f"sub-networks of sparsity {range_text(args.sparsity_range)} (as many parameters as removing "
                    f"that share of the block parameters: {bounds[0]:.3f}-{bounds[1]:.3f} of the dense parameters)")
        if args.range_default:
            searched += (", the default with params among the objectives (`--sparsity-range full` searches the whole "
                         "space)")
    return (weights + f"Sampler `{args.sampler}`{sampler_note}, {trials} completed trials over {searched}; "
            "others are skipped unevaluated.\n")


def _start_text(args: NasArguments, start: dict | None) -> str:
    """The first trials of the study, in a sentence."""
    note = " (the default)" if args.start_default else ""
    if args.start != "mip":
        return f"the search starts from the uniform genotypes inside the range (`--start uniform`{note})"
    text = (f"the search starts from the MIP assembly of replace-one KLs (`--start mip`{note}, as darwin's `mip` "
            f"profile) every {args.mip_step:g} of block sparsity inside the range")
    if start:
        text += (f": {start['trials']} distinct genotypes, assembled at sparsities "
                 f"{', '.join(f'{s:g}' for s in sorted(start['sparsities']))} (scores in `replace_one.json`, "
                 + ("read from the database's store)" if start.get("replace_one_reused") else
                    f"{start['replace_one_seconds']:.0f} s of scoring)"))
    return text


def _write_results(cfg: RunConfig, dense: LoadedModel, space: SearchSpace | LevelSpace, rows: list[dict],
                   args: NasArguments, rule: PickRule, bounds: tuple[float, float] | None, out: Path,
                   supernet_trained: bool = False, start: dict | None = None) -> None:
    """pareto.csv / pareto.json, the picked sub-network as a checkpoint, metrics.json, the plots and report.md."""
    objectives = list(args.objectives)
    front = pareto_front([[r[o] for o in objectives] for r in rows])
    full_params = float(space.num_params(space.largest()))
    sizes = {i: space.num_params(_config_of(space, rows[i])) for i in front}
    quality = quality_objective(objectives)
    chosen, reason = choose_pick(rows, front, rule, quality, objectives, sizes, full_params, bounds)
    if rule.max_params is not None and sizes[chosen] > rule.max_params:
        log.warning("nas: no front point is within %s; the pick is the smallest one, %s parameters", rule.form,
                    f"{sizes[chosen]:,}")
    reference = [max(r[o] for r in rows) * 1.1 for o in objectives]
    hv = hypervolume([[rows[i][o] for o in objectives] for i in front], reference) if len(objectives) <= 3 else None
    front_rows = [rows[i] for i in front]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(front_rows[0]))
    writer.writeheader()
    writer.writerows(front_rows)
    write_text(out / "pareto.csv", buffer.getvalue())
    write_json(out / "pareto.json", {"weights": args.weights, "start": args.start, "start_trials": start,
                                     "objectives": objectives, "front": front_rows,
                                     "hypervolume": hv,
                                     "reference": reference,
                                     "sparsity_range": list(args.sparsity_range or ()) or FULL_SPACE,
                                     "params_range": list(bounds or (0, 1)),
                                     "pick": rule.form, "pick_max_params": rule.max_params, "pick_folder": rule.folder,
                                     "pick_rule": rule.describe(quality), "pick_reason": reason,
                                     "picked_trial": rows[chosen]["trial"]})
    config = _config_of(space, rows[chosen])
    with memory.stage("export"):
        spec, replace = space.stitch(config, dense.adapter)
        export_sliced(dense.model, dense.adapter, spec, replace, out / "picks" / rule.folder,
                      tokenizer=dense.tokenizer, force=True)
        picked = space.slice(dense.model, dense.adapter, config)
        served = export_for_serving(out / "picks" / rule.folder, cfg.export.format, cfg.export.quant, force=True)
    serving = None if served is None else serving_record(served, out, cfg.export.format, cfg.export.quant)
    _plot(rows, front, chosen, objectives, out / "front.png")
    full_label = "full (supernet-trained)" if supernet_trained else "dense"
    share = sizes[chosen] / full_params
    pick_text = (f"`{rule.form}`: {rule.describe(quality)}.\n\nTrial {rows[chosen]['trial']}: {reason}. It has "
                 f"{share:.3f} of the dense parameters (as many as removing {sparsity_at_total(space.shape, sizes[chosen]):.0%} "
                 f"of the block parameters), exported to `picks/{rule.folder}/`.\n"
                 + (f"\n{serving_line(serving)}\n" if serving is not None else ""))
    front_table = [{"trial": r["trial"], **{o: r[o] for o in objectives}, **space.summary(_config_of(space, r))}
                   for r in front_rows]
    write_report(out / "report.md", f"evoprune nas: {cfg.model.source}", [
        ("Search", _search_section(space, args, bounds, len(rows), start)),
        ("Pareto front", markdown_table(front_table) + f"\nHypervolume {hv:.4g} (reference {reference}).\n\n"
                                                        "![front](front.png)\n"),
        ("Pick", pick_text),
        *_evaluate_pick(cfg, dense, picked, full_label, out, serving)])


def _config_of(space: SearchSpace | LevelSpace, row: dict) -> dict:
    """The configuration of a trial row: the row's search-space keys."""
    return {k: row[k] for k in space.dimensions()}


def _plot(rows: list[dict], front: list[int], chosen: int, objectives: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    x, y = objectives[1], objectives[0]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    ax.scatter([r[x] for r in rows], [r[y] for r in rows], s=12, alpha=0.4, label="trials")
    ax.plot(*zip(*sorted((rows[i][x], rows[i][y]) for i in front)), "o-", color="C3", label="Pareto front")
    ax.scatter([rows[chosen][x]], [rows[chosen][y]], s=90, marker="*", color="k", label="pick", zorder=3)
    ax.set(xlabel=x, ylabel=y, title="sub-network search")
    ax.legend(fontsize=8)
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

