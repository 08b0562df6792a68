"""Run under torchrun: load a model memory-mapped, run it, and report how much of its weights are shared pages."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from evoprune.models import load_model


def status() -> dict:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    rollup = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    kb = lambda v: int(v.split()[0]) * 1024  # noqa: E731
    return {"anon": kb(fields["RssAnon"]), "file": kb(fields["RssFile"]), "pss": kb(rollup["Pss"])}


dist.init_process_group("gloo")
before = status()
loaded = load_model(sys.argv[1], with_tokenizer=False)
with torch.no_grad():
    loaded.model(torch.arange(16)[None])
dist.barrier()  # both processes have touched every weight page
after = status()
dist.barrier()
weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
Path(sys.argv[2], f"rank{dist.get_rank()}.json").write_text(json.dumps({"before": before, "after": after,
                                                                        "weights": weights}))
dist.destroy_process_group()
