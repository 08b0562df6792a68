"""The arguments of `evoprune nas` and their defaults, checked before the run directory is touched or the model loaded.

The defaults aim a short search (`--trials 24`) at the sizes users ask for (results/nas.md):
- sampler `local`: at 100 trials it had the best hypervolume and the lowest KL at <= 75% and <= 50%
  of the block parameters; NSGA-II's first generation (50 trials) is random search, so below that
  budget `nsga2` is `random`.
- with params among the objectives, only sub-networks with 0.4-0.9 of the dense parameters (as many
  as removing 76% down to 13% of the block parameters of SmolLM2-135M); the whole space spends most
  trials on tiny models whose KL is useless. `--params-range full` searches the whole space.
- the pick: the lowest-KL front point with at most 0.6 of the dense parameters (about half the
  block parameters removed on small Llamas), not the knee of the whole space's front.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .objectives import QUALITY, check_objectives
from .study import SAMPLERS

DEFAULT_SAMPLER = "local"
DEFAULT_PARAMS_RANGE = (0.4, 0.9)
DEFAULT_TARGET = 0.6
FULL_SPACE = "full"
PICK_FORMS = "knee or params<=FRACTION (e.g. params<=0.5)"


@dataclass(frozen=True)
class PickRule:
    """How the exported sub-network is chosen from the front.

    `default`: the rule nobody asked for by name; when no front point has at most `fraction`, it
    takes the front point with the fewest parameters instead of refusing after the search.
    """
    form: str  # as `--pick` takes it: "knee" or "params<=FRACTION"
    fraction: float | None = None  # None: the knee
    default: bool = False

    @property
    def folder(self) -> str:
        """The pick's folder under `picks/`."""
        return self.form.replace("<=", "-le-")

    def describe(self, quality: str) -> str:
        """The rule in a sentence."""
        if self.fraction is None:
            return ("the knee: the front point nearest the ideal point, each objective scaled to [0, 1] over the "
                    "front points inside the searched range")
        rule = f"the lowest-{quality} front point with at most {self.fraction:g} of the dense parameters"
        if self.default:
            rule += (f" (the default: {DEFAULT_TARGET:g}, about half the block parameters removed on small Llamas, "
                     f"or the middle of a searched range without {DEFAULT_TARGET:g}; if no front point is that small, "
                     "the one with the fewest parameters)")
        return rule


def params_range_arg(text: str | None, objectives: list[str]) -> tuple[float, float] | None:
    """The fractions of the dense parameters `--params-range TEXT` searches, None for the whole space.

    TEXT is LOW,HIGH, or `full` (as is 0,1) for the whole space; without it, DEFAULT_PARAMS_RANGE
    when params is an objective, else the whole space.
    """
    if text is None:
        return DEFAULT_PARAMS_RANGE if "params" in objectives else None
    if text.strip() == FULL_SPACE:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--params-range takes two fractions LOW,HIGH, e.g. 0.5,0.8, or `{FULL_SPACE}` for the whole "
                        f"space; got {text!r}") from None
    return None if low == 0 and high >= 1 else (low, high)


def default_pick(objectives: list[str], params_range: tuple[float, float] | None) -> PickRule:
    """The pick without `--pick`: at most DEFAULT_TARGET of the parameters (the middle of a range
    that excludes it); the knee when params is not an objective."""
    if "params" not in objectives:
        return PickRule("knee", default=True)
    low, high = params_range or (0.0, 1.0)
    target = DEFAULT_TARGET if low <= DEFAULT_TARGET <= high else round((low + high) / 2, 4)
    return PickRule(f"params<={target:g}", target, default=True)


def pick_rule(pick: str | None, objectives: list[str], params_range: tuple[float, float] | None) -> PickRule:
    """The rule `--pick` names (None: `default_pick`); a UserError for anything else."""
    if pick is None:
        return default_pick(objectives, params_range)
    if pick == "knee":
        return PickRule("knee")
    if not pick.startswith("params<="):
        raise UserError(f"--pick must be {PICK_FORMS}, got {pick!r}")
    text = pick.split("<=", 1)[1]
    try:
        fraction = float(text)
    except ValueError:
        raise UserError(f"--pick {pick!r}: FRACTION must be a number in (0, 1], e.g. params<=0.5") from None
    if not 0 < fraction <= 1:
        raise UserError(f"--pick {pick!r}: FRACTION must be in (0, 1] (a fraction of the dense parameters)")
    if "params" not in objectives:
        raise UserError("--pick params<=... needs params among the objectives (e.g. --objectives kl,params)")
    if params_range is not None and fraction < params_range[0]:
        raise UserError(f"--pick {pick!r} is below the searched range {range_text(params_range)} of the dense "
                        f"parameters, so no searched sub-network meets it; lower --params-range (or `{FULL_SPACE}`)")
    return PickRule(pick, fraction)


def range_text(params_range: tuple[float, float] | None) -> str:
    return "the whole space" if params_range is None else f"{params_range[0]:g}-{params_range[1]:g}"


def quality_objective(objectives: list[str]) -> str:
    """The objective a `params<=` pick minimises: the first quality objective (the first one without)."""
    return next((o for o in objectives if o in QUALITY), objectives[0])


def check_arguments(objectives: list[str], budget: int, sampler: str, pick: str | None, supernet_steps: int,
                    params_range: tuple[float, float] | None) -> PickRule:
    """Refuse any bad argument of a nas run; returns the rule of the pick."""
    check_objectives(objectives)
    repeated = sorted({o for o in objectives if objectives.count(o) > 1})
    if repeated:
        raise UserError(f"--objectives names {', '.join(repeated)} twice; give each objective once")
    if budget <= 0:
        raise UserError(f"--trials must be a positive number, got {budget}")
    if supernet_steps < 0:
        raise UserError(f"--supernet-steps must be 0 (no supernet training) or more, got {supernet_steps}")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if params_range is not None and not 0 <= params_range[0] < params_range[1]:
        raise UserError(f"--params-range needs 0 <= low < high, got {params_range[0]:g},{params_range[1]:g}")
    return pick_rule(pick, objectives, params_range)


def fraction_range(text: str | None, flag: str) -> tuple[float, float] | None:
    """`LOW,HIGH` as two floats (None stays None); a UserError naming `flag` when malformed."""
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} takes two fractions LOW,HIGH, e.g. 0.5,0.8; got {text!r}") from None
    return low, high
