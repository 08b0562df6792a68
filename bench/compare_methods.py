"""Each method's pruned model for bench/compare.py, built once into the work directory and reused.

Every method is built with the library (evoprune.pipeline for uniform and depth, evoprune.darwin
for DarwinLM, evoprune.nas.pipeline for the sub-network search, evoprune.search.random_search for
random search over the DarwinLM database) and leaves a checkpoint folder. A rerun finds a
finished build and reuses it. A cheap build (uniform, depth, random search) made with other
settings is rebuilt; an expensive one (DarwinLM, NAS) is refused by the library, and the caller
reports the method as missing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evoprune.baselines import pipeline
from evoprune.darwinlm import pipeline as darwin
from evoprune.arch.export import export_checkpoint
from evoprune.atomic import staged_dir, write_json
from evoprune.config import RunConfig, load_config, to_dict
from evoprune.errors import UserError
from evoprune.models import LoadedModel
from evoprune.whittle.arguments import sparsity_range_of_params
from evoprune.whittle.pipeline import run as run_nas
from evoprune.obs.database import Database
from evoprune.arch.target import resolve_target
from evoprune.levels.budget import make_budget
from evoprune.darwinlm.random_search import random_search, selection_evaluations

log = logging.getLogger(__name__)

# method id -> row label, in build order (random search matches the training-aware search's evaluations)
METHODS = {
    "dense": "dense",
    "uniform": "uniform",
    "depth": "depth (ShortGPT)",
    "darwin-kl": "DarwinLM, KL-only",
    "darwin-ta": "DarwinLM, training-aware",
    "random": "random search (DarwinLM database)",
    "nas": "NAS Pareto pick",
}
# The builds' own evaluations (each run directory's report) are not used by the comparison: keep them small.
BUILD_DEFAULTS = ["eval.latency=false", "data.eval_blocks=4"]
NAS_OBJECTIVES = ["kl", "params"]


@dataclass(frozen=True)
class NasSettings:
    """The one NAS study that serves every sparsity (bench/nas.py found local search in 40-100% best)."""

    trials: int = 150  # completed trials
    blocks: int = 4  # eval-split blocks the objective scores KL on (the first ones)
    sampler: str = "local"
    params_range: tuple[float, float] | None = (0.4, 1.0)  # fraction of the dense parameters searched

    def run_name(self) -> str:
        where = f"{self.params_range[0]:g}-{self.params_range[1]:g}" if self.params_range else "all"
        return f"nas-{self.sampler}-{where}"


@dataclass
class Built:
    model_dir: Path  # the checkpoint folder
    notes: dict = field(default_factory=dict)  # e.g. candidate evaluations and search seconds


def _what_builds(config: dict) -> dict:
    """The parts of a run configuration a baseline's model depends on (not its own evaluation's settings)."""
    data = {k: v for k, v in config.get("data", {}).items() if k != "eval_blocks"}
    return {"model": config.get("model"), "data": data, "prune": config.get("prune"), "seed": config.get("seed")}


class MethodBuilder:
    """Builds (or finds) each method's checkpoint under `work`.

    Args:
        dense: the dense model (shared by the builds that take it in memory).
        overrides: `key=value` config overrides applied to every build (e.g. search.generations=1).
        nas: the one NAS study that serves every sparsity.
        darwin_bench: a `bench/darwin.py` work directory whose winners (KL-only, training-aware,
            random search) are exported instead of searching again; refused unless it was searched
            with this comparison's settings.
    """

    def __init__(self, dense: LoadedModel, overrides: list[str], work: Path, nas: NasSettings,
                 progress: bool = True, darwin_bench: Path | None = None):
        self.dense, self.overrides, self.work = dense, list(overrides), Path(work)
        self.nas, self.progress = nas, progress
        self.darwin_bench = Path(darwin_bench) if darwin_bench else None
        self._db: Database | None = None

    def build(self, method: str, sparsity: float) -> Built:
        if method not in METHODS or method == "dense":
            raise UserError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
        return getattr(self, "_" + method.replace("-", "_"))(sparsity)

    def config(self, **base) -> RunConfig:
        return load_config(None, BUILD_DEFAULTS + self.overrides, base=base)

    def darwin_config(self, sparsity: float, kl_only: bool) -> RunConfig:
        """The quick profile (or what the overrides make of it); KL-only: no training in any stage."""
        cfg = self.config(**{"prune.sparsity": sparsity, "prune.target_params": None})
        if not kl_only:
            return cfg
        stages = len(cfg.search.resolved()["train_tokens"])
        return self.config(**{"prune.sparsity": sparsity, "prune.target_params": None,
                              "search.train_tokens": [0] * stages})

    def _uniform(self, sparsity: float) -> Built:
        return self._baseline("uniform", sparsity)

    def _depth(self, sparsity: float) -> Built:
        return self._baseline("depth", sparsity)

    def _baseline(self, method: str, sparsity: float) -> Built:
        cfg = self.config(**{"prune.method": method, "prune.sparsity": sparsity, "prune.target_params": None})
        out = self.work / f"{method}-{sparsity:g}"
        saved = out / "config.yaml"
        if not saved.exists() or _what_builds(yaml.safe_load(saved.read_text())) != _what_builds(to_dict(cfg)):
            pipeline.prune(cfg, out, force=True, progress=self.progress)
        return Built(out / "model")

    def database(self, cfg: RunConfig) -> Database:
        """The one second-order database of every DarwinLM run and of random search (it does not depend on the target)."""
        if self._db is None:
            self._db = darwin.build_database(cfg, self.dense, self.work / "database", self.progress)
        return self._db

    def _darwin_kl(self, sparsity: float) -> Built:
        return self._darwin(sparsity, kl_only=True)

    def _darwin_ta(self, sparsity: float) -> Built:
        return self._darwin(sparsity, kl_only=False)

    def _darwin(self, sparsity: float, kl_only: bool) -> Built:
        if self.darwin_bench:
            return self._from_darwin_bench("evolution, " + ("KL-only" if kl_only else "training-aware"),
                                           f"darwin-{'kl' if kl_only else 'ta'}", sparsity)
        cfg = self.darwin_config(sparsity, kl_only)
        out = self.work / f"darwin-{'kl' if kl_only else 'ta'}-{sparsity:g}"
        if not out.exists():
            self.database(cfg)
            self._start_darwin_run(cfg, out)
        if not (out / "metrics.json").exists():
            darwin.run(cfg, out, progress=self.progress)  # resumes; refuses a run with other settings
        elif json.loads((out / darwin.RUN_MARKER).read_text()) != darwin.search_config(cfg):
            raise UserError(f"{out} holds a DarwinLM run with other settings; delete it or pass another --work")
        search = json.loads((out / "metrics.json").read_text())["search"]
        return Built(out / "model", {"evaluations": search["evaluations"], "search_s": search["search_seconds"]})

    def _start_darwin_run(self, cfg: RunConfig, out: Path) -> None:
        """A new darwin run directory whose `database/` links to the shared one, so it is built only once.

        It holds what `darwin.run` writes first (its marker), so darwin.run takes it as its own.
        """
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True)
        write_json(tmp / darwin.RUN_MARKER, darwin.search_config(cfg))
        (tmp / "database").symlink_to((self.work / "database").resolve(), target_is_directory=True)
        tmp.rename(out)

    def _from_darwin_bench(self, winner: str, method: str, sparsity: float) -> Built:
        """Export the `winner` genotype that bench/darwin.py found at `sparsity`, with its database."""
        path = self.darwin_bench / f"winners-{sparsity:g}.json"
        if not path.exists():
            raise UserError(f"{path} not found: run python bench/darwin.py --sparsities {sparsity:g} "
                            f"--work {self.darwin_bench} first")
        saved = json.loads(path.read_text())
        cfg = self.darwin_config(sparsity, kl_only=False)
        if saved["identity"] != darwin.search_identity(cfg):
            raise UserError(f"{path} was searched with other settings than this comparison's")
        found = saved["winners"][winner]
        notes = {"evaluations": found["evaluations"], "search_s": found["search_s"], "searched_by": "bench/darwin.py"}
        settings = {"darwin_bench": str(path.resolve()), "winner": found}
        out = self.work / f"{method}-{sparsity:g}-from-bench"
        result_file = out / "result.json"
        if result_file.exists() and json.loads(result_file.read_text())["settings"] == settings:
            return Built(out / "model", notes)
        dense = self.dense
        db = darwin.build_database(cfg, dense, self.darwin_bench / "database", self.progress)
        genotype = found["genotype"]
        target = resolve_target(dense.adapter.shape(dense.model), sparsity=sparsity)
        spec, replace = db.stitch(genotype["attention"], genotype["mlp"], dense.adapter,
                                  meta={"method": winner, "source": dense.name, "target": target.description,
                                        "genotype": genotype})
        self._export(dense.adapter.slice(dense.model, spec, replace), spec, out, {"settings": settings, "notes": notes})
        return Built(out / "model", notes)

    def _export(self, pruned, spec, out: Path, result: dict) -> None:
        with staged_dir(out, force=True) as tmp:
            export_checkpoint(pruned, tmp / "model", tokenizer=self.dense.tokenizer, spec=spec)
            spec.save(tmp / "spec.json")
            write_json(tmp / "result.json", result)

    def _random(self, sparsity: float) -> Built:
        if self.darwin_bench:
            return self._from_darwin_bench("random search", "random", sparsity)
        cfg = self.darwin_config(sparsity, kl_only=True)
        evaluations, source = self._evaluations_to_match(sparsity)
        settings = {"search": darwin.search_config(cfg), "evaluations": evaluations,
                    "walk": darwin.evolution_settings(cfg).init_walk}
        out = self.work / f"random-{sparsity:g}"
        result_file = out / "result.json"
        if result_file.exists() and json.loads(result_file.read_text())["settings"] == settings:
            return Built(out / "model", json.loads(result_file.read_text())["notes"])
        dense, db = self.dense, self.database(cfg)
        table = darwin.search_cost_table(cfg, dense, db, self.work / "random-search-costs", self.progress)
        target = resolve_target(dense.adapter.shape(dense.model), sparsity=sparsity)
        budget = make_budget(table, table.full() * target.block_params / darwin.cost_table(db, "params").full())
        stages = darwin.stages_of(cfg)
        evaluator = darwin.make_evaluator(cfg, dense, db, stages, self.progress)
        result = random_search(evaluator, table, budget, stages, evaluations, seed=cfg.seed,
                               walk=settings["walk"], trade=cfg.search.trade)
        spec, replace = db.stitch(list(result.best.attention), list(result.best.mlp), dense.adapter,
                                  meta={"method": "random search", "source": dense.name,
                                        "target": target.description, "genotype": result.best.to_dict()})
        pruned = dense.adapter.slice(dense.model, spec, replace)
        notes = {"evaluations": result.evaluations, "search_s": round(result.seconds, 1), "matched": source}
        self._export(pruned, spec, out, {"settings": settings, "notes": notes, "genotype": result.best.to_dict(),
                                         "pool_size": result.pool_size})
        return Built(out / "model", notes)

    def _evaluations_to_match(self, sparsity: float) -> tuple[int, str]:
        """The training-aware search's candidate evaluations at `sparsity`: counted if it ran, else expected."""
        metrics = self.work / f"darwin-ta-{sparsity:g}" / "metrics.json"
        if metrics.exists():
            return json.loads(metrics.read_text())["search"]["evaluations"], "DarwinLM training-aware run"
        cfg = self.darwin_config(sparsity, kl_only=False)
        r, stages = cfg.search.resolved(), darwin.stages_of(cfg)
        first = selection_evaluations(r["init_samples"] + 1, stages) if r["init_samples"] else 0
        return first + r["generations"] * selection_evaluations(r["offspring"] + 1, stages), \
            "DarwinLM training-aware settings (expected)"

    def _nas(self, sparsity: float) -> Built:
        """The NAS pick with the least KL among front members within the parameters of `sparsity`."""
        nas = self.nas
        shape = self.dense.adapter.shape(self.dense.model)
        searched = "full" if nas.params_range is None else \
            sparsity_range_of_params(shape, *nas.params_range)  # the study's range, as nas takes it
        cfg = self.config(**{"data.eval_blocks": nas.blocks, "prune.sparsity": sparsity, "prune.target_params": None,
                             "nas.objectives": list(NAS_OBJECTIVES), "nas.trials": nas.trials,
                             "nas.sampler": nas.sampler, "nas.pick": "target", "nas.sparsity_range": searched})
        pick = f"sparsity>={sparsity:g}"
        out = self.work / nas.run_name()
        pick_dir = out / "picks" / pick.replace(">=", "-ge-")
        record = out / "compare_picks.json"
        picks = json.loads(record.read_text()) if record.exists() else {}
        if not pick_dir.exists() or picks.get(pick) != nas.trials:
            run_nas(cfg, out, progress=self.progress)
            write_json(record, {**picks, pick: nas.trials})
        return Built(pick_dir, {"trials": nas.trials, "sampler": nas.sampler, "pick": pick})
