"""The MIP as a front generator: its assembly at many sizes, the KL it predicts, and how well that ranks the KL
measured on held-out text.

Solving the assembly (`levels/assemble.py`) for one budget takes seconds, so it draws a dense front: the genotype
whose summed replace-one KLs are least at every 2.5% of block sparsity from 20% to 80%. That sum is the
MIP's prediction of the genotype's KL. It ignores how modules interact, so a subset of the points, spread
evenly over the front, is measured (the genotype's one-shot KL on held-out blocks), and the Spearman rank
correlation of predicted and measured KL says how well the prediction orders the genotypes.

`predicted_front` writes `predicted_front.json` after every measured point (a killed run resumes with the
points it has), then `predicted_front.csv` and `predicted_front.png`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from ..atomic import staged_file, write_json, write_text  # noqa: E402
from ..errors import UserError  # noqa: E402
from ..report import markdown_table  # noqa: E402
from ..levels.assemble import assemble  # noqa: E402
from ..levels.budget import KINDS, CostTable, make_budget  # noqa: E402
from ..levels.genotype import Genotype  # noqa: E402

FORMAT = "evoprune.predicted_front/1"
DEFAULT_SPARSITIES = tuple(round(0.2 + 0.025 * i, 4) for i in range(25))  # 20%, 22.5%, ... 80%
COLUMNS = ["sparsity", "achieved_sparsity", "block_params", "predicted_kl", "measured_kl"]
log = logging.getLogger(__name__)


@dataclass
class FrontPoint:
    sparsity: float  # the block sparsity asked for
    genotype: Genotype  # the MIP assembly at that size
    block_params: float  # what it keeps: inside the budget band below (1 - sparsity) x the dense blocks
    predicted_kl: float  # its summed replace-one KLs
    measured_kl: float | None = None  # its one-shot KL on the held-out blocks, for the measured points

    def to_dict(self, dense_blocks: float) -> dict:
        return {"sparsity": self.sparsity, "achieved_sparsity": round(1 - self.block_params / dense_blocks, 6),
                "block_params": self.block_params, "predicted_kl": self.predicted_kl,
                "measured_kl": self.measured_kl, "genotype": self.genotype.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "FrontPoint":
        return cls(d["sparsity"], Genotype.from_dict(d["genotype"]), d["block_params"], d["predicted_kl"],
                   d["measured_kl"])


@dataclass
class PredictedFront:
    points: list[FrontPoint]  # every reachable size, largest model first
    skipped: dict[str, str]  # sparsity asked for -> why it has no point
    rho: float | None  # Spearman rank correlation of predicted and measured KL over the measured points

    def measured(self) -> list[FrontPoint]:
        return [p for p in self.points if p.measured_kl is not None]


def predicted_kl(scores: dict[str, list[list[float]]], g: Genotype) -> float:
    """The MIP's objective at `g`: the sum of its modules' replace-one scores."""
    return float(sum(scores[k][i][lv] for k in KINDS for i, lv in enumerate(g.genes(k))))


def mip_point(scores: dict[str, list[list[float]]], table: CostTable, sparsity: float) -> FrontPoint:
    """The MIP assembly at `sparsity` of the block parameters; a UserError when no genotype reaches it."""
    g = assemble(scores, table, make_budget(table, (1 - sparsity) * table.full()))
    return FrontPoint(sparsity, g, table.cost(g), predicted_kl(scores, g))


def spread(n: int, count: int) -> list[int]:
    """`count` of the indices 0..n-1, evenly spaced with both ends included (all of them when count >= n)."""
    if count >= n:
        return list(range(n))
    if count <= 1:
        return [0] if count == 1 else []
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (ties share their mean rank); None for fewer than 3 points or a constant side."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def predicted_front(scores: dict[str, list[list[float]]], table: CostTable, measure: Callable[[Genotype], float],
                    folder: Path, held_out: dict, sparsities: tuple[float, ...] | list[float] = DEFAULT_SPARSITIES,
                    measured: int = 13, progress: bool = True) -> PredictedFront:
    """The MIP assembly and its predicted KL at every sparsity, `measured` of them measured, written to `folder`.

    Args:
        scores: replace-one scores, kind -> layer -> level -> KL (`ReplaceOneScores.scores`).
        table: the parameter costs of the same database's levels (`pipeline.cost_table(db, "params")`).
        measure: a genotype's one-shot KL on the held-out blocks.
        held_out: what `measure` measures on (e.g. the blocks' fingerprint and the teacher): measurements saved
            in `folder` from other blocks, scores or costs are not reused.
        sparsities: fractions of the block parameters removed; one a database cannot reach is skipped, named
            in the result's `skipped`.
        measured: points measured, spread evenly over the reachable ones, the largest and smallest included.

    Raises:
        UserError: a sparsity outside (0, 1).
    """
    wrong = [s for s in sparsities if not 0 < s < 1]
    if wrong:
        raise UserError(f"predicted front: sparsities are fractions of the block parameters removed, strictly "
                        f"between 0 and 1; got {', '.join(f'{s:g}' for s in wrong)}")
    folder = Path(folder)
    key = {"format": FORMAT, "scores": _digest(scores), "costs": _digest(table.costs), "held_out": held_out}
    saved = _saved_points(folder / "predicted_front.json", key)
    points, skipped = [], {}
    for s in sorted(set(sparsities)):
        try:
            points.append(saved[s] if s in saved else mip_point(scores, table, s))
        except UserError as e:
            skipped[f"{s:g}"] = str(e)
    if skipped:
        log.warning("predicted front: no genotype at sparsity %s", ", ".join(skipped))
    front = PredictedFront(points, skipped, None)
    todo = [points[i] for i in spread(len(points), measured) if points[i].measured_kl is None]
    _save(folder, key, front, table.full())
    for p in tqdm(todo, desc="predicted front", disable=not progress):
        p.measured_kl = float(measure(p.genotype))
        _save(folder, key, front, table.full())
    done = front.measured()
    front.rho = spearman([p.predicted_kl for p in done], [p.measured_kl for p in done])
    _save(folder, key, front, table.full())
    rows = [p.to_dict(table.full()) for p in points]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / "predicted_front.csv", text.getvalue())
    plot_predicted_front(front, table.full(), folder / "predicted_front.png")
    return front


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _saved_points(path: Path, key: dict) -> dict[float, FrontPoint]:
    """The points saved at `path` by a run with the same `key`, by sparsity ({} for none)."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("predicted front %s is unreadable; drawing it again", path)
        return {}
    if saved.get("key") != key:
        log.info("predicted front %s was made from other scores, costs or held-out blocks; drawing it again", path)
        return {}
    return {p["sparsity"]: FrontPoint.from_dict(p) for p in saved["points"]}


def _save(folder: Path, key: dict, front: PredictedFront, dense_blocks: float) -> None:
    write_json(folder / "predicted_front.json", {
        "key": key, "rho": front.rho, "measured": len(front.measured()), "dense_block_params": dense_blocks,
        "skipped": front.skipped, "points": [p.to_dict(dense_blocks) for p in front.points]})


def plot_predicted_front(front: PredictedFront, dense_blocks: float, path: Path) -> Path:
    """Predicted and measured KL against block sparsity, and measured against predicted with rho in the title."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    achieved = [1 - p.block_params / dense_blocks for p in front.points]
    axes[0].plot(achieved, [p.predicted_kl for p in front.points], ".-", color="#4c72b0",
                 label="predicted (summed replace-one KL)")
    done = front.measured()
    axes[0].plot([1 - p.block_params / dense_blocks for p in done], [p.measured_kl for p in done], "o",
                 color="#c44e52", label="measured (one-shot, held-out)")
    axes[0].set(xlabel="block sparsity", ylabel="KL to the dense model",
                yscale=_scale([p.predicted_kl for p in front.points] + [p.measured_kl for p in done]))
    axes[0].legend(fontsize=8)
    axes[1].plot([p.predicted_kl for p in done], [p.measured_kl for p in done], "o", color="#c44e52")
    for p in done:
        axes[1].annotate(f"{p.sparsity:g}", (p.predicted_kl, p.measured_kl), fontsize=7, xytext=(3, 3),
                         textcoords="offset points")
    rho = "n/a" if front.rho is None else f"{front.rho:.3f}"
    axes[1].set(xlabel="predicted KL", ylabel="measured KL", xscale=_scale([p.predicted_kl for p in done]),
                yscale=_scale([p.measured_kl for p in done]), title=f"Spearman rho = {rho} over {len(done)} points")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].xaxis.set_minor_formatter(NullFormatter())  # log minor labels of a short range overlap
    with staged_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _scale(values: list[float]) -> str:
    """log where every value is positive (KL spans decades over a front), else linear."""
    return "log" if values and min(values) > 0 else "linear"


def report_section(front: PredictedFront, dense_blocks: float, folder: str) -> str:
    """The family report's section on the predicted front in `folder` (relative to the report)."""
    rho = "not computed (fewer than 3 measured points)" if front.rho is None else f"**{front.rho:.3f}**"
    rows = [{**p.to_dict(dense_blocks), "measured_kl": "" if p.measured_kl is None else p.measured_kl}
            for p in front.points]
    skipped = "".join(f"\n\nNot reachable: sparsity {s} ({why})" for s, why in front.skipped.items())
    return (f"The MIP assembly of the replace-one KLs at {len(front.points)} sizes; its predicted KL is the sum of "
            f"the scores of its modules. {len(front.measured())} of them measured (one-shot KL on held-out "
            f"blocks): Spearman rank correlation of predicted and measured KL {rho}.\n\n"
            + markdown_table(rows, COLUMNS) + f"\n![predicted front]({folder}/predicted_front.png)" + skipped + "\n")
