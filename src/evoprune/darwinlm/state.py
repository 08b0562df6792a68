"""Resumable search state, written atomically after every generation."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_json
from ..errors import UserError
from ..rundir import refuse_changed
from ..training.rng import restore_rng
from ..levels.genotype import Genotype

FORMAT = "evoprune.search_state/1"


@dataclass
class SearchState:
    config: dict  # the search-relevant configuration; resuming with another one is refused
    generation: int  # generations completed
    parent: Genotype
    rng: list  # random.Random.getstate(), as JSON
    evaluations: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # one record per generation

    def restore_rng(self) -> random.Random:
        return restore_rng(self.rng)

    def save(self, path: Path) -> None:
        write_json(path, {"format": FORMAT, "config": self.config, "generation": self.generation,
                          "parent": self.parent.to_dict(), "rng": self.rng, "evaluations": self.evaluations,
                          "seconds": self.seconds, "history": self.history})

    @classmethod
    def load(cls, path: Path, config: dict) -> "SearchState":
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}")
            state = cls(d["config"], int(d["generation"]), Genotype.from_dict(d["parent"]), d["rng"],
                        int(d["evaluations"]), float(d["seconds"]), list(d["history"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"search state {path} is corrupt or not an evoprune search state; delete it to start "
                            "the search again (or rerun with --force)") from None
        refuse_changed(path.parent, state.config, json.loads(json.dumps(config)), "search")  # JSON: tuples as lists
        return state
