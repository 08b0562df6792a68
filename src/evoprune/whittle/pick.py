"""The sub-network a nas run exports: one front point inside the searched range, chosen by a `PickRule`.

The searched range is given here as fractions of the dense parameters (`arguments.params_bounds` of the
sparsity range), the size target as total parameters (`PickRule.max_params`).
"""

from __future__ import annotations

from ..errors import UserError
from .arguments import PickRule
from .pareto import knee_point


def inside_range(front: list[int], sizes: dict[int, int], full_params: float,
                 bounds: tuple[float, float] | None) -> list[int]:
    """The front points whose parameters lie in `bounds` (fractions of `full_params`), in order."""
    if bounds is None:
        return list(front)
    low, high = bounds
    return [i for i in front if low <= sizes[i] / full_params <= high]


def choose_pick(rows: list[dict], front: list[int], rule: PickRule, quality: str, objectives: list[str],
                sizes: dict[int, int], full_params: float,
                bounds: tuple[float, float] | None) -> tuple[int, str]:
    """The picked row and why, in a sentence. `sizes`: the parameters of each front row.

    Only front points inside `bounds` are candidates (a search with the range visits no other,
    but the pick must hold to it whatever the study holds).
    """
    candidates = inside_range(front, sizes, full_params, bounds)
    if not candidates:
        where = "the whole space" if bounds is None else f"{bounds[0]:.3g}-{bounds[1]:.3g} of the dense parameters"
        raise UserError(f"no configuration on the front lies in the searched range ({where}); "
                        "pass --force to start the run over")
    if rule.max_params is None:
        chosen = candidates[knee_point([[rows[i][o] for o in objectives] for i in candidates])]
        return chosen, f"the knee of {_front_points(len(candidates))}"
    fits = [i for i in candidates if sizes[i] <= rule.max_params]
    if fits:
        chosen = min(fits, key=lambda i: rows[i][quality])
        return chosen, (f"the lowest {quality} ({rows[chosen][quality]:.4g}) of {_front_points(len(fits))} with "
                        f"at most {rule.max_params:,} parameters ({rule.form})")
    smallest = min(candidates, key=lambda i: (sizes[i], i))
    if not rule.default:
        raise UserError(f"no configuration on the front meets {rule.form} (at most {rule.max_params:,} parameters); "
                        f"the smallest has {sizes[smallest]:,} ({sizes[smallest] / full_params:.2f} of the dense "
                        "parameters); run more --trials or choose a larger target")
    return smallest, (f"no front point has at most {rule.max_params:,} parameters ({rule.form}); this one has "
                      "the fewest")


def _front_points(n: int) -> str:
    return "the 1 front point" if n == 1 else f"the {n} front points"
