"""One Python call per command: `evoprune.darwin(...)`, `evoprune.prune(...)`, ... `evoprune.export(...)`.

Each call does what the command of the same name does, with the same checks, run directory and
report, and returns a `Result`. The CLI (`cli.py`) is a thin wrapper over these functions.

    import evoprune

    result = evoprune.darwin("smollm2-135m", "runs/darwin-50", sparsity=0.5, profile="mip")
    result.metrics["pruned"]["perplexity"], result.spec.num_params(), result.model_dir
    model = result.load()                      # the pruned model, a transformers PreTrainedModel

Arguments common to every call:
    model: a model folder, a cached hub id, `smollm2-135m` (the embedded model), or a loaded
        `PreTrainedModel` (saved to a temporary folder for the run; pass `tokenizer=` when its
        `name_or_path` folder has none).
    out: the run directory (never overwritten without `force=True`; an interrupted run resumes).
    config: a YAML file of config fields (docs/config.md), or a shipped config's name (`smollm2_uniform50`).
    overrides: config fields as a dict, e.g. `{"data.seq_len": 256, "search.generations": 6}`;
        they win over `config` and lose to the named arguments.
    progress: progress bars.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["Result", "darwin", "database", "evaluate", "export", "nas", "prune", "search", "slice", "train"]


@dataclass
class Result:
    """What a run wrote: its folder, metrics, the SubnetSpec of the result and the exported model folder.

    Attributes:
        out: the run directory (or, for `export`, the written folder).
        metrics: `metrics.json` of the run ({} when the command writes none).
        spec: the result's SubnetSpec (`spec.json`), when the run chose one.
        model_dir: the exported Hugging Face folder of the result, when there is one.
        extra: command-specific paths (e.g. nas: the picks; export: the GGUF file).
    """

    out: Path
    metrics: dict = field(default_factory=dict)
    spec: Any = None
    model_dir: Path | None = None
    extra: dict = field(default_factory=dict)

    def load(self, **kwargs):
        """The result as a `PreTrainedModel` (evoprune's loader: no remote code needed for pruned models)."""
        if self.model_dir is None:
            raise UserError(f"{self.out} holds no exported model")
        from .models import load_model

        return load_model(str(self.model_dir), **kwargs).model

    @classmethod
    def read(cls, out: str | Path, model_dir: str | Path | None = "model", **extra) -> "Result":
        """The Result of the run directory `out` (metrics.json, spec.json and `model_dir` where present)."""
        from .arch.spec import SubnetSpec

        out = Path(out)
        metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
        spec = SubnetSpec.load(out / "spec.json") if (out / "spec.json").is_file() else None
        folder = out / model_dir if model_dir is not None and (out / model_dir / "config.json").is_file() else None
        return cls(out, metrics, spec, folder, extra)


def run_config(model: str | None, config: str | Path | None, overrides: dict | None, named: dict, cls=None):
    """The validated config of a call: YAML `config`, then `overrides`, then the named arguments that were given.

    A size given by name replaces the other way of giving it (`sparsity` clears `target_params` and back).
    """
    from .config import RunConfig, load_config

    given = {key: value for key, value in named.items() if value is not None}
    if "prune.sparsity" in given:
        given.setdefault("prune.target_params", None)
    elif "prune.target_params" in given:
        given["prune.sparsity"] = None
    base = {**(overrides or {}), **given}
    if model is not None:
        base["model.source"] = model
    return load_config(config, [], cls=cls or RunConfig, base=base)


class _ModelSource:
    """A model argument as a source string; a loaded model is saved to a temporary folder while the call runs."""

    def __init__(self, stack: ExitStack, model, tokenizer=None):
        self.path = model
        if model is None or isinstance(model, (str, Path)):
            self.path = None if model is None else str(model)
            return
        from transformers import AutoTokenizer, PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            raise UserError(f"model must be a folder, a hub id, smollm2-135m or a PreTrainedModel, got "
                            f"{type(model).__name__}")
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evoprune-model-")))
        model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is None:
            origin = Path(str(getattr(model, "name_or_path", "") or ""))
            if not origin.is_dir():
                raise UserError("a loaded model needs its tokenizer: pass tokenizer=, or load the model from a folder "
                                "that has one")
            tokenizer = AutoTokenizer.from_pretrained(origin, trust_remote_code=False)
        tokenizer.save_pretrained(folder)
        self.path = str(folder)


@contextmanager
def _prepared(model, out, tokenizer, config, overrides, named: dict, cls=None, check: bool = True):
    """The call's validated config, with `model` as a source path (a loaded model saved while the call runs),
    after the checks every command makes before work (`--out`, device, model folder) unless `check` is off."""
    with ExitStack() as stack:
        cfg = run_config(_ModelSource(stack, model, tokenizer).path, config, overrides, named, cls)
        if check:
            _checked(out, cfg)
        yield cfg


def _checked(out, cfg, teacher: str | None = None) -> None:
    from .data.hub import dataset_commit, hub_of
    from .models import check_device, check_model_source
    from .rundir import check_writable_out

    check_writable_out(out)
    check_device(cfg.model.device)
    hub_data = hub_of(cfg.data.source, cfg.data)
    if hub_data is not None:  # a dataset that is not there (or gated, or not cached offline) fails before any model
        dataset_commit(hub_data)
    for source in (cfg.model.source, teacher):
        if source:
            check_model_source(source, cfg.model.allow_pickle, cfg.model.trust_remote_code,
                               revision=cfg.model.revision if source == cfg.model.source else None)


def darwin(model, out: str | Path, *, sparsity: float | list[float] | None = None,
           target_params: int | list[int] | None = None,
           profile: str | None = None, data: str | None = None, config: str | Path | None = None,
           overrides: dict | None = None, force: bool = False, progress: bool = True, tokenizer=None,
           phase: str = "darwin") -> Result:
    """DarwinLM: second-order database, search (`profile`), export and evaluation (`evoprune darwin`).

    Args:
        sparsity: fraction of the blocks' parameters to remove (`prune.sparsity`); a list makes a family, one
            model per size, in `out/sparsity-S/` (`Result.extra["sizes"]`: a Result each) with `out/front.json`
            and the MIP's predicted front (`Result.extra["predicted_front"]`: its JSON; `search.predicted_front`).
        target_params: total parameters to keep instead (`prune.target_params`), or a list of them.
        profile: `mip` (the MIP assembly of replace-one KLs, no evolution), `evolve` (the MIP start, then 6
            generations of KL-only evolution) or `paper` (DarwinLM's training-aware evolution) (`search.profile`).
        data: calibration / evaluation text (`data.source`).
        phase: `darwin` (everything), `database` (stop after the database) or `search` (database built).
    """
    from .darwinlm import pipeline as workflow

    named = {"prune.sparsity": sparsity, "prune.target_params": target_params, "search.profile": profile,
             "data.source": data}
    with _prepared(model, out, tokenizer, config, overrides, named) as cfg:
        done = workflow.run(cfg, out, phase=phase, force=force, progress=progress)
    if (done / "front.json").is_file():
        front = json.loads((done / "front.json").read_text())["front"]
        predicted = done / "predicted_front" / "predicted_front.json"
        return Result.read(done, database=done / "database", front=done / "front.json",
                           sizes={row["size"]: Result.read(done / row["folder"]) for row in front},
                           **({"predicted_front": predicted} if predicted.is_file() else {}))
    return Result.read(done, database=done / "database")


def database(model, out: str | Path, **kwargs) -> Result:
    """Only the second-order database of a darwin run (`evoprune database`); see `darwin`."""
    return darwin(model, out, phase="database", **kwargs)


def search(model, out: str | Path, **kwargs) -> Result:
    """Search, export and evaluate with the database already in `out` (`evoprune search`); see `darwin`."""
    return darwin(model, out, phase="search", **kwargs)


def prune(model, out: str | Path, *, method: str | None = None, sparsity: float | None = None,
          target_params: int | None = None, data: str | None = None, config: str | Path | None = None,
          overrides: dict | None = None, force: bool = False, progress: bool = True, tokenizer=None) -> Result:
    """A baseline: the same keep-ratio in every layer (`uniform`, the default) or ShortGPT layer removal (`depth`)."""
    from .baselines import pipeline

    named = {"prune.method": method, "prune.sparsity": sparsity, "prune.target_params": target_params,
             "data.source": data}
    with _prepared(model, out, tokenizer, config, overrides, named) as cfg:
        done = pipeline.prune(cfg, out, force=force, progress=progress)
    return Result.read(done)


def slice(model, spec: str | Path, out: str | Path, *, data: str | None = None,  # noqa: A001 - the command's name
          config: str | Path | None = None, overrides: dict | None = None, force: bool = False,
          progress: bool = True, tokenizer=None) -> Result:
    """Cut `model` down to the SubnetSpec saved at `spec` (a run's spec.json), export and evaluate it."""
    from .baselines import pipeline

    with _prepared(model, out, tokenizer, config, overrides, {"data.source": data}) as cfg:
        done = pipeline.slice_with_spec(cfg, spec, out, force=force, progress=progress)
    return Result.read(done)


def evaluate(model, out: str | Path, *, teacher: str | None = None, tasks: str | None = None,
             limit: int | None = None, num_fewshot: int | None = None, engine: str | None = None,
             tokenizer_dir: str | None = None, data: str | None = None, config: str | Path | None = None,
             overrides: dict | None = None, force: bool = False, progress: bool = True, tokenizer=None) -> Result:
    """Perplexity, KL to `teacher`, size and speed, and lm-eval `tasks` (`evoprune eval`).

    The keyword arguments set the `eval` fields of the same names (docs/config.md), as the flags do.

    Args:
        teacher: the dense model to compare against (`eval.teacher`, `--teacher`).
        tasks: lm-eval tasks, a preset (quick | darwinlm | all) or a comma list (`eval.tasks`, `--tasks`).
        limit: at most this many examples per task (`eval.limit`, `--limit`).
        num_fewshot: few-shot examples for every task (`eval.num_fewshot`, `--num-fewshot`).
        engine: `transformers` (an HF folder) or `llamacpp` (`model` and `teacher` are GGUF files) (`eval.engine`).
        tokenizer_dir: llamacpp only: the HF folder whose tokenizer makes the token ids (`eval.tokenizer`).
    """
    from .evaluation.run import evaluate as run_evaluation

    named = {"eval.teacher": teacher, "eval.tasks": tasks, "eval.limit": limit, "eval.num_fewshot": num_fewshot,
             "eval.engine": engine, "eval.tokenizer": tokenizer_dir, "data.source": data}
    with _prepared(model, out, tokenizer, config, overrides, named, check=False) as cfg:
        ev = cfg.eval
        if ev.engine == "llamacpp":
            if ev.paper_ppl:
                raise UserError("--paper-ppl runs in transformers only; drop it with --engine llamacpp")
            if cfg.max_memory_gib is not None:
                raise UserError("--max-memory bounds models run in transformers only; drop it with --engine llamacpp")
            from .rundir import check_writable_out
            from .serving.engine_eval import evaluate_gguf

            check_writable_out(out)
            done = evaluate_gguf(cfg, cfg.model.source, out, teacher=ev.teacher, tokenizer=ev.tokenizer, force=force,
                                 progress=progress)
            return Result.read(done, model_dir=None)
        _checked(out, cfg, ev.teacher)
        done = run_evaluation(cfg, cfg.model.source, out, teacher=ev.teacher, force=force, progress=progress,
                              tasks=ev.tasks, limit=ev.limit, num_fewshot=ev.num_fewshot)
    return Result.read(done, model_dir=None)


def nas(model, out: str | Path, *, objectives: str | list[str] | None = None, trials: int | None = None,
        sampler: str | None = None, pick: str | None = None, supernet_steps: int | None = None,
        weights: str | None = None, start: str | None = None,
        sparsity: float | None = None, target_params: int | None = None,
        sparsity_range: tuple[float, float] | list[float] | str | None = None,
        params_range: tuple[float, float] | str | None = None, data: str | None = None,
        config: str | Path | None = None, overrides: dict | None = None, force: bool = False,
        progress: bool = True, tokenizer=None) -> Result:
    """whittle: a multi-objective sub-network search over the database's levels or importance-sorted slices
    (`evoprune nas`).

    The keyword arguments set the config fields named below (docs/config.md), as the flags do; None
    leaves a field to the config.

    Args:
        objectives: two or three of kl, loss, params, flops, latency, a list or a comma string (`nas.objectives`).
        trials: completed search trials (`nas.trials`, `--trials`).
        sampler: local, nsga2 or random (`nas.sampler`).
        pick: the exported front point, `target` (the lowest-KL one within the size target) or `knee`
            (`nas.pick`); None: target with params among the objectives, else knee. The former
            `params<=F` (F of the dense parameters) works for one release, as `target_params`.
        supernet_steps: weight-sharing training steps before the search (`nas.supernet_steps`).
        weights: `database` (every module's levels in the second-order database, weights updated by OBS)
            or `importance` (first-k slices of the importance-sorted model, weights unchanged) (`nas.weights`).
        start: the first trials with weights `database`: `mip` (the MIP assembly of replace-one KLs at every
            `nas.mip_step` of block sparsity in the range) or `uniform` (the uniform genotypes) (`nas.start`);
            None: mip.
        sparsity: the size target, the fraction of the block parameters removed (`prune.sparsity`).
        target_params: or total parameters kept (`prune.target_params`).
        sparsity_range: (low, high) sparsities to search, `"LOW,HIGH"`, or `"full"` for the whole space
            (`nas.sparsity_range`); None: the config's (default 0.1-0.75 when params is an objective).
        params_range: the former spelling of `sparsity_range`, in fractions of the dense parameters;
            works for one release, with a one-line note.
    """
    from .whittle.arguments import former_spellings
    from .whittle.pipeline import run as run_nas

    if isinstance(objectives, str):
        objectives = [o.strip() for o in objectives.split(",") if o.strip()]
    former_pick = isinstance(pick, str) and pick.startswith("params<=")
    by_name = {"prune.sparsity": sparsity, "prune.target_params": target_params, "nas.sparsity_range": sparsity_range}
    given = {**(overrides or {}), **{k: v for k, v in by_name.items() if v is not None}}
    if former_pick and (given.get("prune.sparsity") is not None or given.get("prune.target_params") is not None):
        raise UserError(f"--pick {pick} is the former spelling of a size target; give only --target-params or "
                        "--sparsity (with --pick target)")
    if params_range is not None and given.get("nas.sparsity_range") is not None:
        raise UserError("--params-range is the former spelling of --sparsity-range; give only --sparsity-range")
    named = {"nas.objectives": None if objectives is None else list(objectives), "nas.trials": trials,
             "nas.sampler": sampler, "nas.pick": None if former_pick else pick, "nas.supernet_steps": supernet_steps,
             "nas.weights": weights, "nas.start": start,
             "nas.sparsity_range": list(sparsity_range) if isinstance(sparsity_range, (tuple, list)) else sparsity_range,
             "prune.sparsity": sparsity, "prune.target_params": target_params, "data.source": data}
    with _prepared(model, out, tokenizer, config, overrides, named) as cfg:
        former = former_spellings(pick if former_pick else None, params_range, lambda: _dense_shape(cfg))
        if former:
            from .config import with_fields

            cfg = with_fields(cfg, former)
        done = run_nas(cfg, out, force=force, progress=progress)
    picks = sorted(p for p in (done / "picks").glob("*") if (p / "config.json").is_file()) \
        if (done / "picks").is_dir() else []
    chosen = _picked_folder(done)
    return Result.read(done, model_dir=f"picks/{chosen}" if chosen else f"picks/{picks[0].name}" if picks else None,
                       picks=picks)


def _dense_shape(cfg):
    """The shape of the config's model, from its config.json (no weights read)."""
    from .models import source_shape

    return source_shape(cfg.model.source, cfg.model.trust_remote_code)


def _picked_folder(out: Path) -> str | None:
    """The folder under `picks/` of the run's latest pick (pareto.json), when it holds a model."""
    try:
        folder = json.loads((out / "pareto.json").read_text()).get("pick_folder")
    except (OSError, ValueError):
        return None
    return folder if folder and (out / "picks" / folder / "config.json").is_file() else None


def train(model, out: str | Path, *, teacher: str | None = None, tokens: int | None = None,
          loss: str | None = None, lora: bool = False, data: str | None = None, config: str | Path | None = None,
          overrides: dict | None = None, force: bool = False, progress: bool = True, tokenizer=None,
          resume_from: str | Path | None = None, command: str = "evoprune train") -> Result:
    """Recovery training of a pruned model: distillation from `teacher` and / or language modelling (`evoprune train`).

    Args:
        resume_from: a checkpoint folder to resume from (default: the run's latest, when `out` holds one).
        command: how the run is described in its report.
    """
    from .recovery import RecoveryRunConfig, recover

    named = {"train.teacher": teacher, "train.tokens": tokens, "train.loss": loss, "data.source": data,
             "train.lora": True if lora else None}
    with _prepared(model, out, tokenizer, config, overrides, named, cls=RecoveryRunConfig, check=False) as cfg:
        _checked(out, cfg, cfg.train.teacher)  # the teacher may come from the config file, not only the argument
        done = recover(cfg, out, force=force, progress=progress, resume_from=resume_from, command=command)
    return Result.read(done)


def export(model, out: str | Path, *, format: str = "gguf", quant: str | None = None,  # noqa: A002 - the flag
           tokenizer_pre: str | None = None, force: bool = False) -> Result:
    """Write an HF model folder in a serving format: `gguf` (llama.cpp) or `nemotron-nas` (`evoprune export`).

    Returns:
        A Result whose `out` is the written folder; `extra` holds the GGUF export's facts (`gguf`).
    """
    from .models import resolve_model_path

    if format != "gguf" and (quant or tokenizer_pre):
        raise UserError("--quant and --tokenizer-pre apply to --format gguf only")
    folder = resolve_model_path(str(model))
    if format == "gguf":
        from .serving.gguf_export import export_gguf

        written = export_gguf(folder, out, quant=quant or "f16", force=force, tokenizer_pre=tokenizer_pre)
        return Result(Path(out), extra={"gguf": written})
    if format == "nemotron-nas":
        from .serving.nemotron_nas import export_nemotron_nas

        return Result(Path(export_nemotron_nas(folder, out, force)), model_dir=Path(out))
    raise UserError(f"unknown export format {format!r}; choose gguf or nemotron-nas")
