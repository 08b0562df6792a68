"""`evoprune nas`: importance sorting -> (supernet training) -> multi-objective search -> Pareto front -> picks.

Run directory: `study.db` (optuna, resumable), `latency.json`, `pareto.csv` / `pareto.json`,
`front.png`, `report.md`, and `picks/<name>/` exported checkpoints. Rerunning the same command
resumes the study; a changed configuration is refused; `--force` starts over.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..arch.export import export_checkpoint
from ..atomic import staged_file, write_json, write_text
from ..config import RunConfig
from ..errors import UserError
from ..evaluate.suite import teacher_for
from ..models import LoadedModel
from ..pipeline import data_blocks, load_source
from ..prune.calibration import CalibrationStats, collect_stats
from ..prune.database import model_fingerprint
from ..report import markdown_table, write_report
from ..supernet.train import SupernetConfig, train_supernet
from .importance import importance_from_stats, permute_model
from .objectives import check_objectives, make_objectives
from .pareto import hypervolume, knee_point, pareto_front
from .space import SearchSpace
from .study import open_study, run_study

MARKER = "nas_run.json"


def _pick(rows: list[dict], front: list[int], pick: str, objectives: list[str], full_params: float) -> int:
    if pick == "knee":
        return front[knee_point([[rows[i][o] for o in objectives] for i in front])]
    if pick.startswith("params<="):
        limit = float(pick.split("<=", 1)[1]) * full_params
        fits = [i for i in front if rows[i]["params"] <= limit]
        if not fits:
            raise UserError(f"no configuration on the front meets {pick}; the smallest has "
                            f"{min(rows[i]['params'] for i in front) / full_params:.2f} of the parameters")
        return min(fits, key=lambda i: rows[i][objectives[0]])
    raise UserError(f"--pick must be knee or params<=FRACTION, got {pick!r}")


def sorted_space(dense: LoadedModel, stats: CalibrationStats, multiple: int = 1,
                 per_layer: bool = False) -> SearchSpace:
    """Sort `dense.model` in place by importance (function-preserving) and return the search space over it."""
    imp = importance_from_stats(stats, dense.adapter, dense.model)
    permute_model(dense.model, dense.adapter, imp)
    return SearchSpace(dense.adapter.shape(dense.model), tuple(imp.layer_rank), per_layer=per_layer,
                       multiple=multiple)


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
    """One row per completed trial: its number, objective values and configuration."""
    return [{"trial": t.number, **dict(zip(objectives, t.values)), **t.params}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def run(cfg: RunConfig, out: str | Path, objectives: list[str], budget: int, sampler: str = "nsga2",
        pick: str = "knee", supernet_steps: int = 0, force: bool = False, progress: bool = True,
        params_range: tuple[float, float] | None = None) -> Path:
    """Args:
        params_range: search only sub-networks with this fraction of the dense parameters (low, high);
            the others are skipped unevaluated.
    """
    check_objectives(objectives)
    if params_range is not None and not 0 <= params_range[0] < params_range[1]:
        raise UserError(f"--params-range needs 0 <= low < high, got {params_range[0]:g},{params_range[1]:g}")
    if "params" not in objectives and pick != "knee":
        raise UserError("--pick params<=... needs params among the objectives")
    out = Path(out)
    if out.exists() and force:
        shutil.rmtree(out)
    settings = {"model": cfg.model.source, "objectives": objectives, "sampler": sampler, "seed": cfg.seed,
                "supernet_steps": supernet_steps, "data": cfg.data.source, "seq_len": cfg.data.seq_len,
                "params_range": list(params_range) if params_range else None}
    marker = out / MARKER
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise UserError(f"{out} exists and is not an evoprune nas run; pass --force to replace it")
        saved = json.loads(marker.read_text())
        differ = sorted(k for k in settings if settings[k] != saved.get(k))
        if differ:
            raise UserError(f"{out} holds a nas run with other settings ({', '.join(differ)}); use --force")
    dense = load_source(cfg)
    if params_range:  # refuse a range no sub-network meets before the run directory exists (shape alone decides)
        shape = dense.adapter.shape(dense.model)
        SearchSpace(shape, tuple(range(len(shape.layers))), multiple=cfg.prune.multiple).params_range_check(*params_range)
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, settings)
    fingerprint = model_fingerprint(dense.model, dense.adapter)
    n_stats = cfg.data.calibration_blocks
    calib = data_blocks(cfg, dense.tokenizer, "calibration", n_stats + cfg.data.eval_blocks)
    if len(calib) <= n_stats:
        raise UserError(f"the calibration split has only {len(calib)} blocks of {cfg.data.seq_len} tokens, all taken "
                        "by the importance statistics; give more text or lower data.calibration_blocks")
    stats = collect_stats(dense.model, dense.adapter, calib[:n_stats], cfg.data.batch_size, progress)
    # the search scores on calibration blocks the importance was not computed on, never on held-out text
    search_blocks = calib[n_stats:]
    teacher = teacher_for(dense.model, str(dense.path), search_blocks, cfg.eval, cfg.data.batch_size, progress) \
        if "kl" in objectives else None
    space = sorted_space(dense, stats, cfg.prune.multiple)
    feasible = space.params_range_check(*params_range) if params_range else None
    model = dense.model
    if supernet_steps:
        supernet_step(cfg, dense, space, supernet_steps, out / "supernet", progress, feasible)
    study = open_study(out / "study.db", objectives, sampler, cfg.seed, fingerprint)
    evaluate = make_objectives(model, dense.adapter, space, objectives, search_blocks, teacher, out / "latency.json",
                               cfg.data.batch_size, {"prompt_len": cfg.eval.prompt_len,
                                                     "new_tokens": cfg.eval.new_tokens, "repeats": cfg.eval.repeats})
    run_study(study, space, evaluate, budget, feasible=feasible)
    rows = trial_rows(study, objectives)
    front = pareto_front([[r[o] for o in objectives] for r in rows])
    full_params = float(space.to_spec(space.largest()).num_params())
    chosen = _pick(rows, front, pick, objectives, full_params)
    reference = [max(r[o] for r in rows) * 1.1 for o in objectives]
    hv = hypervolume([[rows[i][o] for o in objectives] for i in front], reference) if len(objectives) <= 3 else None
    front_rows = [rows[i] for i in front]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(front_rows[0]))
    writer.writeheader()
    writer.writerows(front_rows)
    write_text(out / "pareto.csv", buffer.getvalue())
    write_json(out / "pareto.json", {"objectives": objectives, "front": front_rows, "hypervolume": hv,
                                     "reference": reference, "pick": pick, "picked_trial": rows[chosen]["trial"]})
    name = "knee" if pick == "knee" else pick.replace("<=", "-le-")
    spec = space.to_spec({k: rows[chosen][k] for k in space.dimensions()})
    export_checkpoint(dense.adapter.slice(model, spec), out / "picks" / name, tokenizer=dense.tokenizer, spec=spec,
                      force=True)
    _plot(rows, front, chosen, objectives, out / "front.png")
    write_report(out / "report.md", f"evoprune nas: {cfg.model.source}", [
        ("Pareto front", markdown_table(front_rows) + f"\nHypervolume {hv:.4g} (reference {reference}).\n\n"
                                                       "![front](front.png)\n"),
        ("Pick", f"`{pick}`: trial {rows[chosen]['trial']}, exported to `picks/{name}/`.\n")])
    return out


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

