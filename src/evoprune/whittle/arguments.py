"""The arguments of `evoprune nas` (the `nas` config section and the size target), checked before the run directory is
touched or the model loaded; the target and the searched range turned into parameters once the dense shape is known.

The size is stated as for every other command: `prune.sparsity` (`--sparsity`, the fraction of the block parameters
removed) or `prune.target_params` (`--target-params`, total parameters kept). A sparsity becomes total parameters
through the dense model's shape, as darwin's target does (`arch.target`): the embeddings and LM head are kept whole.

The defaults aim a short search (`--trials 24`) at the sizes users ask for (results/nas.md):
- sampler `local`: at 100 trials it had the best hypervolume and the lowest KL at <= 75% and <= 50%
  of the block parameters; NSGA-II's first generation (50 trials) is random search, so below that
  budget `nsga2` is `random`.
- with params among the objectives, only sub-networks of sparsity 0.1-0.75 (`DEFAULT_SPARSITY_RANGE`: 0.41-0.92 of
  the parameters of SmolLM2-135M, about the former default of 0.4-0.9 of them); the whole space spends most trials
  on tiny models whose KL is useless. `--sparsity-range full` searches the whole space.
- the pick: the lowest-KL front point within the size target (default prune.sparsity 0.5: 0.61 of SmolLM2-135M's
  parameters), not the knee of the whole space's front.

Former spellings, accepted for one release with a one-line note: `--pick params<=F` (F of the dense parameters,
now `--target-params`) and `--params-range LOW,HIGH` (fractions of the dense parameters, now `--sparsity-range`);
`former_spellings` turns them into the current fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..arch.params import total_params
from ..arch.shape import ModelShape
from ..arch.target import resolve_target, sparsity_at_total, total_at_sparsity
from ..config import DEFAULT_SPARSITY_RANGE, FULL_SPACE, NasConfig, PruneConfig, RunConfig
from ..errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SAMPLER = NasConfig.sampler
DEFAULT_WEIGHTS = NasConfig.weights
__all__ = ["DEFAULT_SAMPLER", "DEFAULT_SPARSITY_RANGE", "DEFAULT_WEIGHTS", "FULL_SPACE", "NasArguments", "PickRule",
           "check_arguments", "former_spellings", "params_bounds", "sparsity_range_of_params", "pick_rule",
           "quality_objective", "range_text"]


@dataclass(frozen=True)
class PickRule:
    """How the exported sub-network is chosen from the front.

    `default`: the rule nobody asked for by name (nas.pick null); when no front point is within the
    target, it takes the front point with the fewest parameters instead of refusing after the search.
    """
    form: str  # "knee", "sparsity>=S" (prune.sparsity) or "params<=N" (prune.target_params)
    max_params: int | None = None  # total parameters the pick may have; None: the knee
    default: bool = False

    @property
    def folder(self) -> str:
        """The pick's folder under `picks/`."""
        return self.form.replace("<=", "-le-").replace(">=", "-ge-")

    def describe(self, quality: str) -> str:
        """The rule in a sentence."""
        if self.max_params is None:
            return ("the knee: the front point nearest the ideal point, each objective scaled to [0, 1] over the "
                    "front points inside the searched range")
        rule = f"the lowest-{quality} front point with at most {self.max_params:,} parameters ({self.form})"
        if self.default:
            rule += (" (the default: the size target prune.sparsity / prune.target_params; if no front point is "
                     "that small, the one with the fewest parameters)")
        return rule


@dataclass(frozen=True)
class NasArguments:
    """A nas run's arguments, checked, with the defaults resolved."""
    objectives: tuple[str, ...]
    trials: int
    sampler: str
    pick: str  # target | knee
    pick_default: bool  # nas.pick was null
    supernet_steps: int
    sparsity_range: tuple[float, float] | None  # the sparsities searched; None: the whole space
    range_default: bool  # nas.sparsity_range was null
    weights: str  # database | importance
    start: str | None = None  # mip | uniform (weights database), None (importance)
    start_default: bool = True  # nas.start was null
    mip_step: float = 0.05  # start mip: block sparsity between two MIP genotypes


def check_arguments(cfg: RunConfig) -> NasArguments:
    """Refuse any bad argument of a nas run that needs no model (config validation again, for configs built in
    code, and a size target outside the searched range); the arguments with the defaults resolved."""
    nas = cfg.nas
    problems = nas.problems()
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))
    args = NasArguments(tuple(nas.objectives), nas.trials, nas.sampler, nas.pick_rule(), nas.pick is None,
                        nas.supernet_steps, nas.searched_range(), nas.sparsity_range is None, nas.weights,
                        nas.start_method(), nas.start is None, nas.mip_step)
    if args.pick == "target":
        cfg.prune.one_size("nas")
        if cfg.prune.sparsity is None and cfg.prune.target_params is None:
            raise UserError("nas needs a size target for its pick: give --sparsity or --target-params "
                            "(prune.sparsity / prune.target_params), or --pick knee")
        sparsity = cfg.prune.sparsity
        if sparsity is not None:
            default = " (prune.sparsity's default)" if sparsity == PruneConfig.sparsity else ""
            _check_inside(args, sparsity, f"--sparsity {sparsity:g}{default}")
    return args


def _check_inside(args: NasArguments, sparsity: float, given: str) -> None:
    r = args.sparsity_range
    if r is not None and not r[0] - 1e-9 <= sparsity <= r[1] + 1e-9:
        raise UserError(f"nas: the size target {given} lies outside the searched sparsities {range_text(r)}"
                        f"{' (the default)' if args.range_default else ''}, so no searched sub-network is that size; "
                        f"give a size inside the range, a --sparsity-range covering the size (or `{FULL_SPACE}`), "
                        "or --pick knee")


def pick_rule(args: NasArguments, shape: ModelShape, prune: PruneConfig) -> PickRule:
    """The rule of the pick for the dense model of `shape`: the target in total parameters (`arch.target`)."""
    if args.pick == "knee":
        return PickRule("knee", default=args.pick_default)
    target = resolve_target(shape, prune.sparsity, prune.target_params)
    if prune.target_params is not None:
        sparsity = target.sparsity(shape)
        _check_inside(args, sparsity, f"--target-params {prune.target_params:,} (sparsity {sparsity:.3f})")
    form = f"sparsity>={prune.sparsity:g}" if prune.sparsity is not None else f"params<={prune.target_params}"
    return PickRule(form, target.total_params(shape), default=args.pick_default)


def params_bounds(shape: ModelShape, sparsity_range: tuple[float, float] | None) -> tuple[float, float] | None:
    """The searched range as fractions of the dense parameters (low, high); None for the whole space."""
    if sparsity_range is None:
        return None
    total = total_params(shape)
    low, high = sparsity_range
    return total_at_sparsity(shape, high) / total, total_at_sparsity(shape, low) / total


def range_text(sparsity_range: tuple[float, float] | None) -> str:
    return "the whole space" if sparsity_range is None else f"{sparsity_range[0]:g}-{sparsity_range[1]:g}"


def quality_objective(objectives: list[str] | tuple[str, ...]) -> str:
    """The objective the target pick minimises: the first quality objective (the first one without)."""
    from .objectives import QUALITY

    return next((o for o in objectives if o in QUALITY), objectives[0])


def former_spellings(pick: str | None, params_range: tuple[float, float] | str | None, shape_of) -> dict:
    """The current config fields for the former `--pick params<=F` and `--params-range LOW,HIGH`, with a note each.

    `shape_of()` gives the dense model's shape (called only when there is something to convert): both were
    fractions of its total parameters. Returns dotted fields, e.g. {"prune.target_params": N, "nas.pick": "target"}.
    """
    fields: dict = {}
    former_pick = isinstance(pick, str) and pick.startswith("params<=")
    if not former_pick and params_range is None:
        return fields
    if former_pick:
        try:
            fraction = float(pick.split("<=", 1)[1])
        except ValueError:
            raise UserError(f"--pick {pick!r}: FRACTION must be a number in (0, 1], e.g. params<=0.5; better, give "
                            "the size as --target-params or --sparsity") from None
        if not 0 < fraction <= 1:
            raise UserError(f"--pick {pick!r}: FRACTION must be in (0, 1] (a fraction of the dense parameters)")
        shape = shape_of()
        total = round(fraction * total_params(shape))
        log.warning("nas --pick %s is now --target-params %d (%g of the dense parameters; or --sparsity %.3g); the old "
                    "spelling works for one release", pick, total, fraction, sparsity_at_total(shape, total))
        fields.update({"prune.target_params": total, "prune.sparsity": None, "nas.pick": "target"})
    if params_range is not None:
        fields["nas.sparsity_range"] = _former_range(params_range, shape_of)
    return fields


def sparsity_range_of_params(shape: ModelShape, low: float, high: float) -> list[float]:
    """The sparsities [LOW, HIGH] (4 decimals, within [0, 1]) that leave `low` to `high` of the parameters of `shape`."""
    total = total_params(shape)
    converted = [round(min(1.0, max(0.0, sparsity_at_total(shape, f * total))), 4) for f in (high, low)]
    if converted[0] >= converted[1]:
        raise UserError(f"--params-range {low:g},{high:g} holds no sparsity of this model (sparsities 0 to 1 leave "
                        f"{total_at_sparsity(shape, 1.0) / total:.3f} to 1 of its parameters); give --sparsity-range "
                        "instead")
    return converted


def _former_range(params_range: tuple[float, float] | str, shape_of) -> list[float] | str:
    """`--params-range LOW,HIGH` (fractions of the dense parameters) as a sparsity range, with a one-line note."""
    if isinstance(params_range, str):
        text = params_range.strip()
        if text == FULL_SPACE:
            log.warning("nas --params-range is now --sparsity-range (sparsities, the unit of --sparsity); "
                        "--sparsity-range full searches the whole space; the old spelling works for one release")
            return FULL_SPACE
        try:
            low, high = (float(v) for v in text.split(","))
        except ValueError:
            raise UserError(f"--params-range takes two fractions LOW,HIGH, e.g. 0.5,0.8, or `{FULL_SPACE}` for the "
                            f"whole space; got {params_range!r} (it is now --sparsity-range, in sparsities)") from None
    else:
        low, high = params_range
    if not 0 <= low < high:
        raise UserError(f"--params-range needs 0 <= low < high, got {low:g},{high:g} (it is now --sparsity-range, "
                        "in sparsities)")
    converted = FULL_SPACE if low == 0 and high >= 1 else sparsity_range_of_params(shape_of(), low, high)
    shown = converted if converted == FULL_SPACE else ",".join(f"{v:g}" for v in converted)
    log.warning("nas --params-range %g,%g is now --sparsity-range %s (sparsities, the unit of --sparsity); the old "
                "spelling works for one release", low, high, shown)
    return converted


def fraction_range(text: str | None, flag: str) -> tuple[float, float] | None:
    """`LOW,HIGH` as two floats (None stays None); a UserError naming `flag` when malformed."""
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} takes two fractions LOW,HIGH, e.g. 0.5,0.8; got {text!r}") from None
    return low, high
