"""The serving format a run ends in (`export.format`, `--format`): written beside the run's HF folder.

A prune, slice, darwin, search or nas run always exports its model as a Hugging Face folder
(`model/`, or `picks/<name>/` for nas). With `--format gguf` or `--format nemotron-nas` the same
folder is then also written in that format next to it, as `<folder>-gguf/model.gguf` or
`<folder>-nemotron-nas/`, by the writers behind `evoprune export`.
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..errors import UserError
from ..arch.nemotron_format import SPACE


def check_format_before_work(cfg: RunConfig, searched: bool) -> None:
    """Refuse a serving format the run's result cannot be written in, when the config alone tells.

    Args:
        cfg: the run's configuration (`export.format`, `search.space`).
        searched: whether the result comes from a search over `search.space` (darwin, search, nas).
            A prune or slice result is checked only by the exporter, at the end.

    Raises:
        UserError: `--format nemotron-nas` on a search outside the nemotron-nas space; `--format gguf` for a
            model whose family, sliding windows or RoPE llama.cpp's deci graph cannot run, pruned or not.
    """
    if searched and cfg.export.format == SPACE and cfg.search.space != SPACE:
        raise UserError(f"--format {SPACE} needs a search in that format's space: add --space {SPACE} "
                        f"(search.space={SPACE}), or export later with `evoprune export --format {SPACE}`")
    if searched and cfg.export.format == "gguf":
        from ..models import read_config, resolve_model_path
        from .gguf_layout import check_expressible

        check_expressible(read_config(resolve_model_path(cfg.model.source), cfg.model.trust_remote_code))


def export_for_serving(model_dir: Path, fmt: str, quant: str | None = None, force: bool = False) -> Path | None:
    """Write the HF folder `model_dir` in serving format `fmt` beside it, as `<model_dir>-<fmt>`.

    Args:
        model_dir: the run's exported HF folder.
        fmt: hf (nothing is written), gguf or nemotron-nas.
        quant: the GGUF weight type (None: f16); gguf only.
        force: replace an existing output folder (a resumed run writing its result again).

    Returns:
        The GGUF file or the Nemotron-NAS folder written, or None for hf.

    Raises:
        UserError: one line from the exporter when the model cannot be written in `fmt`.
    """
    if fmt == "hf":
        return None
    out = model_dir.with_name(f"{model_dir.name}-{fmt}")
    if fmt == "gguf":
        from .gguf_export import export_gguf

        return export_gguf(model_dir, out, quant=quant or "f16", force=force).path
    if fmt == SPACE:
        from .nemotron_nas import export_nemotron_nas

        return export_nemotron_nas(model_dir, out, force=force)
    raise UserError(f"unknown serving format {fmt!r}; choose hf, gguf or {SPACE}")


def serving_record(path: Path, run_dir: Path, fmt: str, quant: str | None) -> dict:
    """What metrics.json says of a serving export: format, weight type, path (relative to `run_dir`), bytes."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    record = {"format": fmt, "path": path.relative_to(run_dir).as_posix(), "size_bytes": sum(f.stat().st_size
                                                                                           for f in files)}
    if fmt == "gguf":
        record["quant"] = quant or "f16"
    return record


def serving_line(record: dict) -> str:
    """One sentence of report.md naming the serving export."""
    kind = f"GGUF ({record['quant']}, llama.cpp)" if record["format"] == "gguf" else "Nemotron-NAS folder"
    return f"Also exported as a {kind}: `{record['path']}`, {record['size_bytes'] / 2**20:.1f} MiB."
