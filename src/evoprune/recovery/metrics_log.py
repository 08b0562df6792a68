"""metrics.jsonl of a training run: one JSON record per optimizer step (plus evaluations)."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text


class MetricsLog:
    """Append-only JSONL, written by the main process only; a resumed run first drops records past its step."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if self.enabled:
            kept = [r for r in self.records() if r.get("step", 0) <= step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                break  # a line cut by a kill: everything after it is lost too
        return out
