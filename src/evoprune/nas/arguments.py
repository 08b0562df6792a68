"""The arguments of `evoprune nas`, checked before the run directory is touched or the model loaded."""

from __future__ import annotations

from ..errors import UserError
from .objectives import check_objectives
from .study import SAMPLERS

PICK_FORMS = "knee or params<=FRACTION (e.g. params<=0.5)"


def pick_fraction(pick: str) -> float | None:
    """The FRACTION of `--pick params<=FRACTION` (None for knee); a UserError for anything else."""
    if pick == "knee":
        return None
    if not pick.startswith("params<="):
        raise UserError(f"--pick must be {PICK_FORMS}, got {pick!r}")
    text = pick.split("<=", 1)[1]
    try:
        fraction = float(text)
    except ValueError:
        raise UserError(f"--pick {pick!r}: FRACTION must be a number in (0, 1], e.g. params<=0.5") from None
    if not 0 < fraction <= 1:
        raise UserError(f"--pick {pick!r}: FRACTION must be in (0, 1] (a fraction of the dense parameters)")
    return fraction


def check_arguments(objectives: list[str], budget: int, sampler: str, pick: str, supernet_steps: int,
                    params_range: tuple[float, float] | None) -> float | None:
    """Refuse any bad argument of a nas run; returns the pick's parameter fraction (None for knee)."""
    check_objectives(objectives)
    repeated = sorted({o for o in objectives if objectives.count(o) > 1})
    if repeated:
        raise UserError(f"--objectives names {', '.join(repeated)} twice; give each objective once")
    if budget <= 0:
        raise UserError(f"--budget must be a positive number of trials, got {budget}")
    if supernet_steps < 0:
        raise UserError(f"--supernet-steps must be 0 (no supernet training) or more, got {supernet_steps}")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    fraction = pick_fraction(pick)
    if fraction is not None and "params" not in objectives:
        raise UserError("--pick params<=... needs params among the objectives (e.g. --objectives kl,params)")
    if params_range is not None and not 0 <= params_range[0] < params_range[1]:
        raise UserError(f"--params-range needs 0 <= low < high, got {params_range[0]:g},{params_range[1]:g}")
    return fraction
