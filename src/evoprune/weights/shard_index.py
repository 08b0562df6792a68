"""Check a sharded safetensors checkpoint against its index before any weight is read.

A sharded checkpoint is `model-00001-of-0000N.safetensors` ... plus `model.safetensors.index.json`,
whose `weight_map` says which shard holds each tensor. transformers trusts the index: a missing
shard fails deep inside loading, and a tensor the index names but no shard holds ends up randomly
initialised with only a warning. These checks read the index and the shard headers only (no
tensor data), so they cost milliseconds even for an 8B model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SHARD_NAME = re.compile(r"model-(\d+)-of-(\d+)\.safetensors")


def check_sharded_index(path: Path) -> None:
    """Refuse a model folder whose sharded safetensors checkpoint is incomplete or contradicts its index.

    Args:
        path: the model folder.

    Raises:
        UserError: when the index is not valid JSON or has no `weight_map`; when it names a shard
            that is missing or a tensor absent from its shard; when shard files on disk contradict
            the index (a shard it does not name, or names that count a different number of shards);
            or when there are shard files but neither an index nor `model.safetensors`.
    """
    path = Path(path)
    index_file = path / INDEX_FILE
    if not index_file.is_file():
        _check_shards_without_index(path)
        return
    weight_map = read_weight_map(index_file)
    shards = sorted(set(weight_map.values()))
    _check_shard_files(path, shards)
    _check_shard_count(path, shards)
    for shard in shards:
        _check_shard_tensors(path / shard, [name for name, file in weight_map.items() if file == shard])


def read_weight_map(index_file: Path) -> dict[str, str]:
    """The index's `weight_map` (tensor name -> shard file name), checked to be one."""
    where = f"{index_file.name} in {index_file.parent}"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {where}: {e}; re-save the checkpoint or restore the index") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{where} has no weight_map; re-save the checkpoint or restore the index")
    bad = [name for name, file in weight_map.items() if not isinstance(file, str) or Path(file).name != file]
    if bad:
        raise UserError(f"{where} maps tensor {bad[0]} to {weight_map[bad[0]]!r}, "
                        "which is not a file name in the model folder")
    return weight_map


def _check_shards_without_index(path: Path) -> None:
    """Shard files with neither an index nor a single `model.safetensors` cannot be loaded."""
    shards = sorted(p.name for p in path.glob("model-*-of-*.safetensors") if SHARD_NAME.fullmatch(p.name))
    if shards and not (path / SINGLE_FILE).is_file():
        raise UserError(f"{path} holds shard files ({shards[0]} ...) but no {INDEX_FILE}; "
                        "restore the index that was saved with them")


def _check_shard_files(path: Path, shards: list[str]) -> None:
    missing = [shard for shard in shards if not (path / shard).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of its {len(shards)} shards)" if len(missing) > 1 else ""
        raise UserError(f"{INDEX_FILE} names shard {missing[0]}, which is missing from {path}{more}; "
                        "copy the complete checkpoint")


def _check_shard_count(path: Path, shards: list[str]) -> None:
    """Shard files on disk and the shard names in the index must tell the same count."""
    on_disk = sorted(p.name for p in path.glob("model-*-of-*.safetensors") if SHARD_NAME.fullmatch(p.name))
    stray = [shard for shard in on_disk if shard not in shards]
    if stray:
        raise UserError(f"{path} holds {stray[0]}, which {INDEX_FILE} does not name (the index names "
                        f"{len(shards)} shards, {len(on_disk)} are on disk); restore the index saved with them")
    counts = {int(m.group(2)) for m in map(SHARD_NAME.fullmatch, shards) if m}
    if counts and counts != {len(shards)}:
        told = " and ".join(str(n) for n in sorted(counts))
        raise UserError(f"{INDEX_FILE} in {path} names {len(shards)} shards, but their names say there are {told}; "
                        "the index or the shards are incomplete, copy the complete checkpoint")


def _check_shard_tensors(shard: Path, names: list[str]) -> None:
    """Every tensor the index places in `shard` must be in the shard's header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(shard, "pt") as weights:
            held = set(weights.keys())
    except (SafetensorError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot load weights from {shard.parent}: {shard.name} is not a readable "
                        f"safetensors file ({reason})") from None
    absent = [name for name in names if name not in held]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise UserError(f"{INDEX_FILE} in {shard.parent} places tensor {absent[0]} in {shard.name}, "
                        f"which does not hold it{more}; restore the shards saved with this index")
